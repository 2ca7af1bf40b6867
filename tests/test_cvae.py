"""The Coupled VAE (Hao & Shafto): its semi-dual against POT's Sinkhorn and scipy's assignment, the normalised
posterior of Eq. (20), the cost matrices of both likelihoods, and the mixture-of-Gaussians metrics."""

import math

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from shortrun_ot import mixture
from shortrun_ot.likelihood import negative_log_likelihood, pairwise_negative_log_likelihood
from shortrun_ot.methods.base import EvaluationProtocol, StageContext, StateFile
from shortrun_ot.methods.cvae import (CoupledVAE, ascend_dual, c_transform, coupling, posterior_weights,
                                      semi_dual_objective)

GAUSSIAN, BERNOULLI = {"likelihood": "gaussian", "sigma": 0.3}, {"likelihood": "bernoulli"}


def solve_semi_dual(costs: torch.Tensor, epsilon: float, steps: int = 3000, u=None) -> torch.Tensor:
    """Gradient ascent on L(u) for fixed prior draws, with the module's own step (plain SGD: the step size
    n * eps / 2 is below 2 / (largest curvature), the curvature of L being at most 1 / (n eps))."""
    n = costs.shape[1]
    u = torch.zeros(n, dtype=costs.dtype) if u is None else u.clone()
    u.requires_grad_(True)
    optimizer = torch.optim.SGD([u], lr=n * epsilon / 2)
    for _ in range(steps):
        ascend_dual(u, optimizer, costs, epsilon)
    return u.detach()


def test_semi_dual_objective_of_two_images_and_one_draw_by_hand():
    u, costs, eps = torch.tensor([0.3, -0.2]), torch.tensor([[1.0, 2.5]]), 0.7
    by_hand = (0.3 - 0.2) / 2 - eps * math.log((math.exp((0.3 - 1.0) / eps) + math.exp((-0.2 - 2.5) / eps)) / 2)
    assert float(semi_dual_objective(u, costs, eps)) == pytest.approx(by_hand, rel=1e-6)


def test_the_decoder_gradient_is_the_coupling_proposition_3_2():
    """dL/dc_ji = (1/m) softmax_i((u_i - c_ji) / eps): the decoder is pulled towards the images coupled to z_j."""
    generator = torch.Generator().manual_seed(0)
    costs = torch.rand((4, 6), generator=generator, dtype=torch.float64).requires_grad_(True)
    u = torch.randn(6, generator=generator, dtype=torch.float64)
    semi_dual_objective(u, costs, 0.3).backward()
    torch.testing.assert_close(costs.grad, coupling(u, costs.detach(), 0.3) / 4)


def test_ascent_on_u_solves_the_discrete_entropic_problem_as_pots_sinkhorn():
    """With the prior discretised by m fixed draws, maximising L over u is entropic OT between the uniform
    measures on the n images and the m draws; POT's log-domain Sinkhorn gives the same potential (up to the
    common constant) and the same plan."""
    generator = torch.Generator().manual_seed(1)
    m, n, eps = 7, 5, 0.5
    costs = 2 * torch.rand((m, n), generator=generator, dtype=torch.float64)
    u = solve_semi_dual(costs, eps)
    plan, log = ot.sinkhorn(np.full(n, 1 / n), np.full(m, 1 / m), costs.T.numpy(), eps, method="sinkhorn_log",
                            log=True, stopThr=1e-13, numItermax=100_000)
    potential = eps * log["log_u"]
    np.testing.assert_allclose((u - u.mean()).numpy(), potential - potential.mean(), atol=1e-7)
    np.testing.assert_allclose(coupling(u, costs, eps).T.numpy() / m, plan, atol=1e-9)


@pytest.mark.slow
def test_as_epsilon_goes_to_zero_the_coupling_becomes_the_optimal_assignment():
    """n draws, n images: the entropic plan concentrates on scipy's optimal assignment (each draw coupled to
    one image, each image to one draw), not on each draw's cheapest image."""
    generator = torch.Generator().manual_seed(2)
    n = 6
    costs = torch.rand((n, n), generator=generator, dtype=torch.float64)
    cheapest = costs.argmin(1)
    rows, columns = linear_sum_assignment(costs.numpy())
    assert len(set(cheapest.tolist())) < n  # the test is informative: cheapest images collide
    u = None
    for eps in (0.3, 0.1, 0.03, 0.01, 0.003):  # epsilon scaling, warm-started
        u = solve_semi_dual(costs, eps, steps=4000, u=u)
    plan = coupling(u, costs, 0.003)
    assert plan.argmax(1).tolist() == columns[np.argsort(rows)].tolist()
    assert float(plan.max(1).values.min()) > 0.95


def test_the_normalised_posterior_integrates_to_one_and_the_papers_minus_one_to_one_over_e():
    """At the optimum, q(z | x_i) = p(z) exp((u_i + v(z) - c(x_i, z)) / eps) has mass E_p[n pi(x_i | z)] = 1;
    with Eq. (20)'s extra "- 1" in the exponent the mass is 1/e."""
    generator = torch.Generator().manual_seed(3)
    m, n, eps = 9, 4, 0.4
    costs = 3 * torch.rand((m, n), generator=generator, dtype=torch.float64)
    u = solve_semi_dual(costs, eps, steps=6000)
    v = c_transform(u, costs, eps)
    density = torch.exp((u[None, :] + v[:, None] - costs) / eps)  # q(z_j | x_i) / p(z_j)
    torch.testing.assert_close(density.mean(0), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-8)
    torch.testing.assert_close((density * math.exp(-1)).mean(0), torch.full((n,), math.exp(-1), dtype=torch.float64),
                               rtol=0, atol=1e-8)


def test_posterior_weights_of_a_training_image_are_its_coupling_column_normalised():
    """Encoding through v alone (u_i cancels) gives a training image the weights of Eq. (20) over the draws."""
    generator = torch.Generator().manual_seed(4)
    costs = torch.rand((8, 5), generator=generator, dtype=torch.float64)
    u, eps = torch.randn(5, generator=generator, dtype=torch.float64), 0.2
    column = coupling(u, costs, eps)
    expected = (column / column.sum(0)).T
    torch.testing.assert_close(posterior_weights(c_transform(u, costs, eps), costs.T, eps), expected)


@pytest.mark.parametrize("settings", [GAUSSIAN, BERNOULLI], ids=["gaussian", "bernoulli"])
def test_pairwise_costs_are_the_per_pair_negative_log_likelihoods_in_both_layouts(settings):
    generator = torch.Generator().manual_seed(5)
    images = torch.rand((5, 1, 4, 4), generator=generator, dtype=torch.float64) * 2 - 1
    decoded = torch.rand((3, 1, 4, 4), generator=generator, dtype=torch.float64) * 2 - 1
    expected = torch.stack([negative_log_likelihood(images, g.expand_as(images), settings) for g in decoded], 1)
    torch.testing.assert_close(pairwise_negative_log_likelihood(images, decoded, settings), expected)
    torch.testing.assert_close(pairwise_negative_log_likelihood(images, decoded, settings, rows="decodings"),
                               expected.T)


def test_bernoulli_likelihood_of_binary_images_is_torch_distributions():
    generator = torch.Generator().manual_seed(6)
    binary = (torch.rand((4, 1, 3, 3), generator=generator) > 0.5).double()
    decoded = torch.rand((4, 1, 3, 3), generator=generator, dtype=torch.float64) * 1.8 - 0.9
    expected = -torch.distributions.Bernoulli(probs=(decoded + 1) / 2).log_prob(binary).flatten(1).sum(1)
    torch.testing.assert_close(negative_log_likelihood(binary * 2 - 1, decoded, BERNOULLI), expected)


# ---------------------------------------------------------------- the method on the 2-D mixture


def mixture_settings(**overrides) -> dict:
    settings = {"method": "cvae", "dataset": "mog25", "classes": None, "train_images": None, "heldout_digit": None,
                "seed": 0, "latent_dim": 2, "batch_size": 50, "iterations": 2, "likelihood": "gaussian",
                "sigma": 0.1, "epsilon": 1.0, "posterior_draws": 500,
                "dual": {"steps": 2, "lr": 0.01, "beta1": 0.9, "beta2": 0.999},
                "learning": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999}}
    return {**settings, **overrides}


def test_stages_leave_their_inputs_alone_and_the_model_encodes_through_the_training_images():
    points, _ = mixture.mixture_points(per_mode=4)
    method, ctx = CoupledVAE(mixture_settings()), StageContext(points, torch.device("cpu"))
    state, _ = method.run("init", 0, {}, ctx)
    assert torch.equal(state["u"], torch.zeros(len(points)))
    before = {key: value.clone() for key, value in state["decoder"].items()}
    learned, report = method.run("learn", 1, {"model": StateFile(state)}, ctx)
    assert all(torch.equal(before[key], state["decoder"][key]) for key in before)
    assert report["decoder_steps"] == 2 and math.isfinite(report["objective"])
    assert not torch.equal(learned["u"], state["u"])  # the ascent moved the dual variables
    with pytest.raises(ValueError, match="training images"):
        method.trained_model({"model": StateFile(learned)}, ctx.device, EvaluationProtocol(64, 0))
    model = method.trained_model({"model": StateFile(learned)}, ctx.device, EvaluationProtocol(64, 0, points))
    codes = model.encode(points)
    assert codes.shape == (len(points), 2) and torch.isfinite(codes).all()
    draws = model.posterior_samples(points, torch.Generator().manual_seed(0))
    assert all(any(torch.equal(z, draw) for draw in model.draws) for z in draws[:5])  # posteriors live on the draws


# ---------------------------------------------------------------- the mixture metrics


def test_points_on_the_modes_are_all_high_density_with_no_spread():
    means = mixture.mode_means()
    assert mixture.high_density_ratio(means) == 1.0 and mixture.std_within_modes(means) == 0.0


def test_high_density_ratio_and_spread_of_a_hand_built_set():
    """(0.1, 0): within 4 sigma = 0.2 of (0, 0); (0, 0.3) and (0.5, 0.5) are not: HDR 1/3, std sqrt(0.01 / 2)."""
    points = torch.tensor([[0.1, 0.0], [0.0, 0.3], [0.5, 0.5]])
    assert mixture.high_density_ratio(points) == pytest.approx(1 / 3)
    assert mixture.std_within_modes(points) == pytest.approx(math.sqrt(0.01 / 2))


def test_the_data_itself_scores_as_the_paper_says_a_perfect_model_would():
    """The true mixture: HDR 1 - P(chi^2_2 > 16) = 1 - e^-8 and a spread of 0.05 (within the 4-sigma cut)."""
    points, labels = mixture.mixture_points(per_mode=2000, seed=1)
    assert mixture.high_density_ratio(points) == pytest.approx(1 - math.exp(-8), abs=5e-4)
    assert mixture.std_within_modes(points) == pytest.approx(0.05, rel=0.01)
    assert torch.equal(mixture.nearest_modes(points)[0], labels)


def test_mmd_of_prior_draws_is_near_zero_and_of_a_shifted_set_is_not():
    generator = torch.Generator().manual_seed(7)
    prior_like = torch.randn((2000, 2), generator=generator)
    same, shifted = mixture.aggregate_posterior_mmd(prior_like, seed=0), mixture.aggregate_posterior_mmd(
        prior_like + 0.5, seed=0)
    assert abs(same) < 0.002 and shifted > 0.03


def test_modes_covered_counts_modes_with_a_high_density_point():
    means = mixture.mode_means()
    collapsed = means[12].repeat(10, 1)  # everything on the centre mode: a perfect ratio, one mode
    assert mixture.high_density_ratio(collapsed) == 1.0 and mixture.modes_covered(collapsed) == 1
    assert mixture.modes_covered(torch.cat([means[:7], means[:3] + 0.5])) == 7
