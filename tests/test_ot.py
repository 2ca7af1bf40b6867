"""The OT correction (Sec. 5.2, Alg. 2, Eq. 10-12) against the exact assignment of scipy."""

import functools
import json
import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from shortrun_ot import ot
from shortrun_ot.ot import assign, transport_correction

RELATIVE_ROUNDING = 1e-12


def shifted_gaussian(n, d, seed):
    generator = torch.Generator().manual_seed(seed)
    return 0.5 + 0.7 * torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator)


def clustered(n, d, seed):
    generator = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(5, d, generator=generator)
    labels = torch.randint(0, 5, (n,), generator=generator)
    source = centres[labels] + 0.3 * torch.randn(n, d, generator=generator)
    return source, torch.randn(n, d, generator=generator)


def run_off(n, d, seed):
    """``shifted_gaussian`` with 3 % of the sources moved out to norm 100, as chains that ran off
    (an untrained generator) leave them."""
    source, target = shifted_gaussian(n, d, seed)
    far = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: n * 3 // 100]
    source[far] *= 100 / source[far].norm(dim=1, keepdim=True)
    return source, target


def exact_optimum(source, target):
    """Optimal mean squared distance (Jonker-Volgenant solver on the dense cost matrix)."""
    cost = torch.cdist(source.double(), target.double()).square().numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


@functools.cache
def instance_with_optimum(instance, n, d):
    source, target = instance(n, d, seed=n + d)
    return source, target, exact_optimum(source, target)


def is_permutation(index):
    return torch.equal(index.sort().values, torch.arange(len(index)))


@pytest.mark.parametrize(
    "instance, n, d, max_iter",  # max_iter None: the CPU default, repair alone; 100: the GPU default
    [
        (shifted_gaussian, 300, 8, None),
        (clustered, 300, 8, None),
        (shifted_gaussian, 1200, 30, None),
        (clustered, 1200, 30, None),
        (shifted_gaussian, 300, 8, 100),
        (clustered, 1200, 30, 100),
        (clustered, 2500, 30, None),  # n > 2,048: the sparse matching (LAPJVsp); below, the dense one
        (clustered, 900, 2, None),  # 2-D latents, as in Fig. 3
        (run_off, 1200, 30, None),
        (run_off, 1200, 30, 100),
        (run_off, 2500, 30, None),
    ],
)
@pytest.mark.slow
def test_assign_matches_exact_optimum(instance, n, d, max_iter):
    source, target, optimum = instance_with_optimum(instance, n, d)
    result = assign(source, target, max_iter=max_iter)
    assert is_permutation(result.target_index)
    assert result.unmatched == 0
    assert result.cost <= 1.001 * optimum
    assert result.lower_bound <= optimum * (1 + RELATIVE_ROUNDING)
    assert optimum <= result.cost * (1 + RELATIVE_ROUNDING)
    assert result.gap <= 1e-3 * optimum  # the certificate is tight too
    squared = (source.double() - target.double()[result.target_index]).square().sum(1)
    assert result.cost == pytest.approx(float(squared.mean()), rel=1e-12)


def test_far_off_sources_do_not_spoil_the_start():
    """The Gaussian start is fitted to the bulk of each cloud: the far-off 3 % are left out of the fit, a
    Gaussian cloud is kept whole, and the start's argmax map stays about as good as on well-spread latents
    (with the far-off points in the fit, it left 94 % of the targets unmatched and the repair took 6 rounds)."""
    source, target = run_off(2500, 30, seed=2500)
    far = source.norm(dim=1) > 50
    assert torch.equal(ot._bulk(source.double()), source.double()[~far])
    assert torch.equal(ot._bulk(target.double()), target.double())
    result = assign(source, target)
    assert result.unmatched_before_repair < 0.6 * 2500
    assert result.repair_rounds <= 4


def test_lower_bound_of_the_paper_map_is_below_the_optimum():
    source, target = clustered(500, 16, seed=1)
    optimum = exact_optimum(source, target)
    result = assign(source, target, repair=False, seed=0)
    assert result.lower_bound <= optimum * (1 + RELATIVE_ROUNDING)
    assert result.lower_bound > 0.99 * optimum  # the bound is informative, not just valid
    assert result.repair_rounds == 0


def test_without_repair_leftovers_are_marked_and_targets_used_once():
    source, target = shifted_gaussian(600, 30, seed=2)
    result = assign(source, target, repair=False, seed=0, eps=0.05)
    index = result.target_index
    matched = index[index >= 0]
    assert (index == -1).any()
    assert len(matched.unique()) == len(matched)
    assert result.unmatched == int((index == -1).sum()) == result.unmatched_before_repair
    assert result.iterations < 100  # stopped by the rule ||grad E||_1 <= eps ...
    assert result.unmatched <= 0.05 * 600 / 2  # ... which bounds the leftovers by n eps / 2


def test_small_blocks_give_the_same_exact_answer(monkeypatch):
    source, target = clustered(500, 8, seed=3)
    optimum = exact_optimum(source, target)
    monkeypatch.setattr(ot, "_CHUNK_BYTES", 37 * 500 * 8)  # blocks of 37 rows in float64, 74 in float32
    result = assign(source, target, max_iter=10)
    assert is_permutation(result.target_index)
    assert result.cost == pytest.approx(optimum, rel=1e-12)
    assert result.lower_bound <= optimum * (1 + RELATIVE_ROUNDING)


def test_float64_input_and_explicit_device():
    source, target = shifted_gaussian(400, 10, seed=4)
    optimum = exact_optimum(source, target)
    result = assign(source.double(), target.double(), device="cpu")
    assert is_permutation(result.target_index)
    assert result.cost == pytest.approx(optimum, rel=1e-12)
    assert result.target_index.device.type == "cpu"


def test_warm_start_from_previous_potentials():
    source, target = shifted_gaussian(600, 12, seed=5)
    first = assign(source, target)
    again = assign(source, target, init_h=first.h)
    assert torch.equal(again.target_index, first.target_index)
    assert again.repair_rounds == 1  # certified at once
    assert again.unmatched_before_repair < first.unmatched_before_repair / 2


def test_degenerate_inputs():
    target = torch.randn(50, 4, generator=torch.Generator().manual_seed(6))
    result = assign(torch.zeros(50, 4), target)  # every permutation is optimal
    assert is_permutation(result.target_index)
    assert result.cost == pytest.approx(float(target.double().square().sum(1).mean()), rel=1e-12)
    assert result.gap == pytest.approx(0.0, abs=1e-9)
    single = assign(torch.ones(1, 3), torch.zeros(1, 3))
    assert single.target_index.tolist() == [0]
    assert single.cost == pytest.approx(3.0)


@pytest.mark.parametrize("repair", [True, False])
def test_deterministic_for_a_seed(repair):
    source, target = clustered(700, 10, seed=7)
    first = assign(source, target, repair=repair, seed=11, max_iter=20)
    second = assign(source, target, repair=repair, seed=11, max_iter=20)
    assert torch.equal(first.target_index, second.target_index)
    assert torch.equal(first.h, second.h)
    assert first.lower_bound == second.lower_bound


def test_summary_is_json_ready():
    source, target = shifted_gaussian(200, 5, seed=8)
    summary = assign(source, target).summary()
    expected = {"cost", "lower_bound", "gap", "unmatched_before_repair", "unmatched", "iterations", "seconds"}
    assert expected <= summary.keys()
    assert json.loads(json.dumps(summary)) == summary


def test_alpha_one_moves_latents_onto_the_prior_sample():
    latents, prior = shifted_gaussian(500, 6, seed=9)
    corrected, result = transport_correction(latents, prior, alpha=1.0)
    assert torch.equal(corrected, prior[result.target_index])
    inverse = torch.empty_like(result.target_index)
    inverse[result.target_index] = torch.arange(len(inverse))
    assert torch.equal(corrected[inverse], prior)  # the same set of points


def test_alpha_zero_returns_the_latents_bit_for_bit():
    latents, prior = shifted_gaussian(300, 6, seed=10)
    latents[0, 0] = -0.0
    corrected, _ = transport_correction(latents, prior, alpha=0.0)
    assert torch.equal(corrected.view(torch.int32), latents.view(torch.int32))


def test_intermediate_alpha_mixes_as_eq_10():
    latents, prior = shifted_gaussian(300, 6, seed=11)
    corrected, result = transport_correction(latents, prior, alpha=0.3)
    assert torch.allclose(corrected, 0.3 * prior[result.target_index] + 0.7 * latents)


def test_unmatched_latents_stay_put_without_repair():
    latents, prior = shifted_gaussian(600, 30, seed=12)
    corrected, result = transport_correction(latents, prior, alpha=0.5, repair=False, seed=0)
    unmatched = result.target_index == -1
    assert unmatched.any()
    assert torch.equal(corrected[unmatched], latents[unmatched])
    matched = ~unmatched
    expected = 0.5 * prior[result.target_index[matched]] + 0.5 * latents[matched]
    assert torch.allclose(corrected[matched], expected)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan])
def test_alpha_outside_unit_interval_is_rejected(alpha):
    latents, prior = shifted_gaussian(10, 2, seed=13)
    with pytest.raises(ValueError, match="alpha"):
        transport_correction(latents, prior, alpha=alpha)


GOOD = torch.zeros(4, 3)


@pytest.mark.parametrize(
    "source, target, kwargs, message",
    [
        (torch.zeros(4, 3), torch.zeros(5, 3), {}, "shapes differ"),
        (torch.zeros(4, 3), torch.zeros(4, 2), {}, "shapes differ"),
        (torch.zeros(0, 3), torch.zeros(0, 3), {}, "at least one point"),
        (torch.zeros(4), torch.zeros(4), {}, "2-D"),
        (torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, 3, dtype=torch.int64), {}, "floating-point"),
        (GOOD, torch.zeros(4, 3, dtype=torch.float64), {}, "dtypes differ"),
        (GOOD, torch.zeros(4, 3, device="meta"), {}, "devices differ"),
        (torch.tensor([[0.0, math.nan, 0.0]] * 4), GOOD, {}, "NaN or Inf"),
        (GOOD, torch.tensor([[0.0, 0.0, math.inf]] * 4), {}, "NaN or Inf"),
        (GOOD, GOOD, {"eps": 0.0}, "eps"),
        (GOOD, GOOD, {"max_iter": 0}, "max_iter"),
        (GOOD, GOOD, {"lr": (0.1, -1.0)}, "lr"),
        (GOOD, GOOD, {"candidates": 0}, "candidates"),
        (GOOD, GOOD, {"compute_dtype": torch.float16}, "compute_dtype"),
        (GOOD, GOOD, {"init_h": torch.zeros(3)}, "init_h"),
        (GOOD, GOOD, {"init_h": torch.full((4,), math.nan)}, "init_h"),
    ],
)
def test_bad_input_is_rejected(source, target, kwargs, message):
    with pytest.raises(ValueError, match=message):
        assign(source, target, **kwargs)



def test_progress_reports_the_repair_rounds(capsys):
    source, target = shifted_gaussian(200, 5, seed=15)
    result = assign(source, target, progress=True)
    assert f"OT repair round {result.repair_rounds}" in capsys.readouterr().out
