"""WAE (Tolstikhin et al. 2018): the IMQ-kernel MMD, the GAN penalty and adversary loss, the cost in their
units and their learning-rate schedule, against hand computations; WAE-MMD through its stages."""

import math

import pytest
import torch

from shortrun_ot.methods.wae import (adversary_loss, gan_penalty, imq_mmd, learning_rate_factor,
                                     quadratic_cost)

from test_methods import run_per_stage, tiny_data, tiny_settings  # noqa: F401 (fixture)


def test_imq_mmd_equals_a_hand_computation():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 1.0], [-1.0, 0.5]], dtype=torch.float64)
    expected = 0.0
    for scale in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0):
        c = 2 * 2 * scale

        def k(a, b):
            return c / (c + float(((a - b) ** 2).sum()))

        xx = sum(k(x[i], x[j]) for i in range(3) for j in range(3) if i != j) / 6
        yy = sum(k(y[i], y[j]) for i in range(2) for j in range(2) if i != j) / 2
        xy = sum(k(x[i], y[j]) for i in range(3) for j in range(2)) / 6
        expected += xx + yy - 2 * xy
    assert float(imq_mmd(x, y)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_imq_mmd_is_zero_in_expectation_for_equal_distributions_and_grows_with_a_shift():
    generator = torch.Generator().manual_seed(0)
    same = [float(imq_mmd(torch.randn(200, 4, generator=generator), torch.randn(200, 4, generator=generator)))
            for _ in range(20)]
    shifted = float(imq_mmd(torch.randn(200, 4, generator=generator) + 1.0, torch.randn(200, 4, generator=generator)))
    mean, spread = sum(same) / 20, (sum((v - sum(same) / 20) ** 2 for v in same) / 19) ** 0.5
    assert abs(mean) < 3 * spread / 20 ** 0.5  # unbiased: the mean of 20 estimates is within 3 standard errors of 0
    assert shifted > max(same) * 5


def test_adversary_loss_and_gan_penalty_are_the_binary_cross_entropies():
    def adversary(z):  # a fixed "network": the logit is the first coordinate
        return z[:, 0]

    prior = torch.tensor([[2.0], [-1.0]])
    codes = torch.tensor([[0.5], [-3.0], [1.0]])
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = (-(math.log(sigmoid(2.0)) + math.log(sigmoid(-1.0))) / 2
                - (math.log(1 - sigmoid(0.5)) + math.log(1 - sigmoid(-3.0)) + math.log(1 - sigmoid(1.0))) / 3)
    assert float(adversary_loss(adversary, codes, prior)) == pytest.approx(expected, rel=1e-6)
    penalty = -(math.log(sigmoid(0.5)) + math.log(sigmoid(-3.0)) + math.log(sigmoid(1.0))) / 3
    assert float(gan_penalty(adversary, codes)) == pytest.approx(penalty, rel=1e-6)


def test_quadratic_cost_is_their_l2sq_on_the_unit_scale():
    images = torch.ones(2, 1, 4, 4)  # white on the [-1, 1] scale
    reconstructions = torch.full((2, 1, 4, 4), -1.0)  # black: a difference of 1 per pixel on [0, 1]
    reconstructions[1, 0, 0, 0] = 1.0  # one pixel right in the second image
    assert float(quadratic_cost(images, reconstructions)) == pytest.approx(0.05 * (16 + 15) / 2)
    assert float(quadratic_cost(images, reconstructions, weight=1.0)) == pytest.approx(4 * (16 + 15) / 2)


def test_learning_rate_schedule_is_their_manual_one():
    assert [learning_rate_factor(t) for t in (1, 30, 31, 50, 51, 100, 101, 1000)] == [
        1.0, 1.0, 0.5, 0.5, 0.1, 0.1, 0.01, 0.01]


@pytest.mark.slow
def test_wae_mmd_trains_through_its_stages(tiny_data, tmp_path):  # noqa: F811
    settings = tiny_settings("wae")
    settings["penalty"] = "mmd"
    run_per_stage(settings, tmp_path / "run", tiny_data, 2)
    report = __import__("json").loads((tmp_path / "run" / "it0002" / "learn.json").read_text())
    assert math.isfinite(report["penalty"]) and report["cost"] > 0 and "adversary_loss" not in report


def test_mmd_of_a_single_code_is_a_clear_error():
    with pytest.raises(ValueError, match="at least two codes"):
        imq_mmd(torch.zeros(1, 3), torch.zeros(5, 3))
