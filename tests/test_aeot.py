"""AE-OT (Liu et al.): the LP of Eq. (14), the matching of Eq. (17), the loss of Eq. (18) and the map of
Eq. (19), against scipy's LP and assignment solvers, closed forms and hand computations."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment, linprog
from torch import nn

from shortrun_ot.methods.aeot import eight_gaussians, kantorovich_duals, mode_coverage, potential_loss, transport


def lp_optimum(x: np.ndarray, y: np.ndarray) -> float:
    """Eq. (14) by HiGHS' dual simplex: max (1/m) sum_j H_j - (1/m) sum_i H_i, H_j - H_i <= c_ij."""
    m = len(x)
    cost = 0.5 * ((x[:, None, :] - y[None, :, :]) ** 2).sum(2)
    rows = np.zeros((m * m, 2 * m))  # variables: H_i (sources) then H_j (targets)
    for i in range(m):
        for j in range(m):
            rows[i * m + j, i], rows[i * m + j, m + j] = -1, 1
    objective = np.concatenate([np.ones(m), -np.ones(m)]) / m  # linprog minimises
    result = linprog(objective, A_ub=rows, b_ub=cost.ravel(), bounds=(None, None), method="highs-ds")
    assert result.status == 0
    return -result.fun


@pytest.mark.parametrize("seed", range(5))
def test_the_duals_are_feasible_and_optimal_for_the_lp_of_eq_14(seed):
    rng = np.random.default_rng(seed)
    m, d = 7, 3
    x, y = rng.normal(size=(m, d)), rng.normal(loc=1.0, scale=2.0, size=(m, d))
    phi, psi, matching = kantorovich_duals(torch.from_numpy(x), torch.from_numpy(y))
    cost = 0.5 * ((x[:, None, :] - y[None, :, :]) ** 2).sum(2)
    phi, psi = phi.numpy(), psi.numpy()
    assert (psi[None, :] - phi[:, None] <= cost + 1e-9).all()  # the constraints of Eq. (14)
    dual_value = psi.mean() - phi.mean()
    assert dual_value == pytest.approx(lp_optimum(x, y), abs=1e-9)  # the LP's optimum
    rows, columns = linear_sum_assignment(cost)  # strong duality: the primal optimum, the exact assignment
    assert dual_value == pytest.approx(cost[rows, columns].mean(), abs=1e-9)
    assert matching.tolist() == columns.tolist()  # the optimal assignment (a.s. unique for random points)
    slack = cost + phi[:, None] - psi[None, :]  # Eq. (17): sigma(i) minimises c_ij + phi_i - psi_j
    assert np.allclose(slack[np.arange(m), columns], slack.min(1), atol=1e-9)


class QuadraticPotential(nn.Module):
    """phi(z) = 1/2 z^T A z + b^T z - 1/2 ||z||^2: T(z) = z + grad phi = A z + b (Eq. 10)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, z):
        return 0.5 * ((z @ self.a) * z).sum(1) + z @ self.b - 0.5 * z.square().sum(1)


def sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.sqrt()) @ vectors.T


def test_eq_19_with_the_brenier_potential_of_two_gaussians_maps_the_source_onto_the_target():
    """Between N(0, I) and N(mu, S) the OT map is z -> S^1/2 z + mu; with D its Kantorovich potential,
    z + grad D(z) must give samples with the target's mean and covariance."""
    torch.manual_seed(0)
    factor = torch.tensor([[1.5, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.4, 0.3, 0.5]], dtype=torch.float64)
    covariance, mean = factor @ factor.T, torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    potential = QuadraticPotential(sqrtm(covariance), mean)
    mapped = transport(potential, torch.randn(200_000, 3, dtype=torch.float64))
    torch.testing.assert_close(mapped.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(mapped.T), covariance, atol=0.03, rtol=0)


def test_the_loss_of_eq_18_matches_a_hand_computation():
    """D(z) = w^T z + 1 has gradient w everywhere (||w|| = 5); two points, lambda = 0.1."""
    potential = nn.Linear(2, 1)
    with torch.no_grad():
        potential.weight.copy_(torch.tensor([[3.0, 4.0]]))
        potential.bias.fill_(1.0)
    network = lambda z: potential(z).squeeze(1)  # noqa: E731
    z_x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    matched = torch.tensor([[3.0, 0.0], [1.0, 2.0]])  # displacements 3 and 1
    phi = torch.tensor([1.0, 6.0])  # D(z_x) = 1, 8: residuals 0 and 2, best constant 1 -> squares 1, 1
    loss, terms = potential_loss(network, z_x, phi, matched, gradient_weight=0.1)
    # value term (1 + 1) / 2 = 1; gradient term ((5 - 3)^2 + (5 - 1)^2) / 2 = 10
    assert terms["value"].item() == pytest.approx(1.0)
    assert terms["gradient"].item() == pytest.approx(10.0)
    assert loss.item() == pytest.approx(1.0 + 0.1 * 10.0)
    shifted, _ = potential_loss(network, z_x, phi + 7.0, matched, gradient_weight=0.1)
    assert shifted.item() == pytest.approx(loss.item())  # H's constant does not matter


def test_the_loss_gradient_reaches_the_network_through_the_gradient_penalty():
    network = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    z_x, matched = torch.randn(4, 2), torch.randn(4, 2)
    values = network(z_x).squeeze(1).detach()  # phi = D(z_x): the value term is zero
    loss, terms = potential_loss(lambda z: network(z).squeeze(1), z_x, values, matched, gradient_weight=1.0)
    assert terms["value"].item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    assert network[0].weight.grad.abs().sum() > 0


def test_mode_coverage_counts_points_near_each_mode():
    _, modes = eight_gaussians(1, 10.0, torch.Generator().manual_seed(0))
    assert torch.allclose(modes.norm(dim=1), torch.full((8,), 10.0))
    on_modes = mode_coverage(modes.repeat(2, 1), modes, radius=3.0)
    assert on_modes == {"near_fraction": 1.0, "modes_covered": 8, "points_per_mode": [2] * 8}
    # the source's centre and two points 2 and 4 away from mode 0 (10, 0): one of three is near, one mode covered
    points = torch.tensor([[0.0, 0.0], [12.0, 0.0], [14.0, 0.0]])
    assert mode_coverage(points, modes, radius=3.0) == {"near_fraction": 1 / 3, "modes_covered": 1,
                                                         "points_per_mode": [1, 0, 0, 0, 0, 0, 0, 0]}


@pytest.mark.slow
def test_interpolation_runs_between_the_mapped_codes_of_prior_draws(tmp_path):
    """AE-OT's Fig. 5: each path starts and ends at Dec(z + grad D(z)) of two prior draws, the images that
    sampling gives; the steps between decode the linear interpolation of the two mapped codes."""
    from shortrun_ot import cli, layout
    from shortrun_ot.data import prepare
    from shortrun_ot.io import load_tensors, save_json
    from shortrun_ot.methods.base import EvaluationProtocol
    from shortrun_ot.pipeline import load_state

    from test_methods import make_mnist_like, run_per_stage, tiny_settings, write_mnist_files

    write_mnist_files(tmp_path / "raw", make_mnist_like())
    prepare("mnist", tmp_path / "raw", tmp_path / "mnist.pt")
    settings = tiny_settings("aeot")
    trained = run_per_stage(settings, tmp_path / "run", tmp_path / "mnist.pt", settings["iterations"])
    final = {role: layout.state_file(tmp_path / "run", ref)
             for role, ref in trained.evaluation_points(settings["iterations"])["end"].items()}
    config = tmp_path / "config.json"
    save_json({k: v for k, v in settings.items() if k != "iterations"}, config)
    out = tmp_path / "interpolation.pt"
    assert cli.main(["interpolation", "--config", str(config), "--data", str(tmp_path / "mnist.pt"), "--model",
                     *(f"{role}={path}" for role, path in final.items()), "--pairs", "2", "--steps", "5",
                     "--device", "cpu", "--batch-size", "10", "--out", str(out)]) in (0, None)
    images = load_tensors(out, "interpolation")["images"].view(2, 5, 1, 28, 28)
    model = trained.trained_model({role: load_state(path, settings) for role, path in final.items()},
                                  torch.device("cpu"), EvaluationProtocol(batch_size=10, langevin_steps=1))
    ends = model.sample(4).view(2, 2, 1, 28, 28)  # the same fixed prior stream: draws 0, 1 | 2, 3
    assert torch.allclose(images[:, 0], ends[:, 0], atol=1e-5) and torch.allclose(images[:, -1], ends[:, 1], atol=1e-5)
    mapped = model.generative_latents(model.prior_latents(4))
    assert not torch.allclose(mapped, model.prior_latents(4))  # the potential moves the draws
    middle = model.decode(((mapped[0] + mapped[1]) / 2).unsqueeze(0))
    assert torch.allclose(images[0, 2], middle[0], atol=1e-5)
