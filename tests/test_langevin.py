"""Langevin inference (Eqs. 5-7) against hand computations and the exact Gaussian posterior."""

import pytest
import torch

from shortrun_ot.langevin import DivergenceError, chain_divergence, langevin_step, log_joint, short_run_inference


def linear_generator(weight: torch.Tensor, bias: torch.Tensor):
    """g(z) = W z + b with images of shape (D,)."""
    return lambda z: z @ weight.T + bias


def test_log_joint_matches_eq5_by_hand():
    weight, bias = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]]), torch.tensor([0.5, 0.0, -1.0])
    z, image = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 1.0, 2.0]])
    # g(z) = (1 - 2 + 0.5, 0 + 1 + 0, 3 - 1 - 1) = (-0.5, 1, 1); I - g = (0.5, 0, 1); ||.||^2 = 1.25
    expected = -1.25 / (2 * 0.5**2) - (1 + 1) / 2
    assert log_joint(linear_generator(weight, bias), z, image, sigma=0.5).item() == pytest.approx(expected)


def test_langevin_step_matches_hand_computation():
    torch.manual_seed(0)
    weight, bias = torch.randn(6, 3), torch.randn(6)
    z, images, noise = torch.randn(4, 3), torch.randn(4, 6), torch.randn(4, 3)
    s, sigma = 0.2, 0.7
    # grad_z log p(z|I) = W^T (I - W z - b) / sigma^2 - z, per example (Eq. 6)
    grad = (images - z @ weight.T - bias) @ weight / sigma**2 - z
    expected = z + s**2 / 2 * grad + s * noise
    new_z, _ = langevin_step(linear_generator(weight, bias), z, images, step_size=s, sigma=sigma, noise=noise)
    torch.testing.assert_close(new_z, expected, rtol=1e-5, atol=1e-5)


def test_gradient_is_per_example_not_batch_averaged():
    """The same example gives the same update alone or inside a batch of 50."""
    torch.manual_seed(1)
    weight, bias = torch.randn(5, 2), torch.randn(5)
    z, images, noise = torch.randn(50, 2), torch.randn(50, 5), torch.randn(50, 2)
    g = linear_generator(weight, bias)
    batch, _ = langevin_step(g, z, images, step_size=0.3, sigma=1.0, noise=noise)
    alone, _ = langevin_step(g, z[:1], images[:1], step_size=0.3, sigma=1.0, noise=noise[:1])
    torch.testing.assert_close(batch[:1], alone)


@pytest.mark.slow
def test_long_run_reaches_the_gaussian_posterior():
    """Linear-Gaussian model: p(z|I) = N(Sigma W^T (I - b) / sigma^2, Sigma), Sigma = (W^T W / sigma^2 + I)^-1."""
    torch.manual_seed(2)
    d, D, sigma, chains = 3, 5, 1.0, 2000
    weight, bias = torch.randn(D, d) * 0.8, torch.randn(D)
    image = torch.randn(D)
    precision = weight.T @ weight / sigma**2 + torch.eye(d)
    cov = torch.linalg.inv(precision)
    mean = cov @ weight.T @ (image - bias) / sigma**2

    images = image.expand(chains, D).contiguous()
    z0 = torch.randn(chains, d)
    z, _ = short_run_inference(
        linear_generator(weight, bias), images, z0, steps=2000, step_size=0.07, sigma=sigma,
        batch_size=chains, rng=torch.Generator().manual_seed(3),
    )
    sample_cov = torch.cov(z.T)
    assert torch.allclose(z.mean(0), mean, atol=0.05), (z.mean(0), mean)
    assert torch.allclose(sample_cov, cov, atol=0.05 * cov.diagonal().max()), (sample_cov, cov)


def test_short_run_is_deterministic_for_a_seeded_stream_and_batching_invariant():
    torch.manual_seed(4)
    weight, bias = torch.randn(4, 2), torch.randn(4)
    images, z0 = torch.randn(10, 4), torch.randn(10, 2)
    run = lambda batch: short_run_inference(  # noqa: E731
        linear_generator(weight, bias), images, z0, steps=5, step_size=0.1, sigma=1.0,
        batch_size=batch, rng=torch.Generator().manual_seed(5),
    )[0]
    torch.testing.assert_close(run(10), run(10), rtol=0, atol=0)
    assert not torch.equal(run(10), z0)


def test_too_large_step_size_raises_divergence():
    weight, bias = torch.eye(3) * 30, torch.zeros(3)
    with pytest.raises(DivergenceError, match="non-finite"):
        short_run_inference(
            linear_generator(weight, bias), torch.ones(8, 3), torch.ones(8, 3), steps=200, step_size=1.0,
            sigma=0.3, batch_size=8, rng=torch.Generator().manual_seed(0),
        )


def test_chain_divergence_follows_the_linear_gaussian_closed_form():
    """For g(z) = W z + b the posterior's Hessian is -H, H = W^T W / sigma^2 + I, and two chains with the same
    noise differ by delta_k = (I - s^2 H / 2)^k delta_0: contraction iff s < 2 / sqrt(lambda_max(H))."""
    torch.manual_seed(4)
    d, D, sigma = 3, 8, 0.5
    weight, bias = torch.randn(D, d, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    g = linear_generator(weight, bias)
    hessian = weight.T @ weight / sigma**2 + torch.eye(d, dtype=torch.float64)
    critical = 2 / torch.linalg.eigvalsh(hessian).max().sqrt().item()
    z, images = torch.randn(6, d, dtype=torch.float64), torch.randn(6, D, dtype=torch.float64)
    for s in (0.5 * critical, 0.99 * critical, 1.01 * critical, 1.5 * critical):
        rng = torch.Generator().manual_seed(5)
        distances = chain_divergence(g, images, z, steps=40, step_size=s, sigma=sigma, perturbation=1e-6, rng=rng)
        # the same stream: the first draw is the perturbation's direction
        direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float32).double()
        delta = 1e-6 * direction / direction.norm(dim=1, keepdim=True)
        step = torch.eye(d, dtype=torch.float64) - s**2 / 2 * hessian
        for k in (1, 10, 40):
            expected = (delta @ torch.linalg.matrix_power(step, k).T).norm(dim=1)
            torch.testing.assert_close(distances[k - 1], expected, rtol=1e-6, atol=1e-18)
        grows = distances[-1].median() > 1e-6
        assert grows == (s > critical), (s, critical)
