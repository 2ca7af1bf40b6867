"""Short-run Langevin inference of the latent vectors (Sec. 4, Eqs. 5-7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

Generator = Callable[[torch.Tensor], torch.Tensor]


class DivergenceError(RuntimeError):
    """Langevin dynamics produced non-finite latents (step size too large)."""


def log_joint(generator: Generator, z: torch.Tensor, images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-example log p(I, z) up to its constant (Eq. 5): -||I - g(z)||^2 / (2 sigma^2) - ||z||^2 / 2."""
    residual = (images - generator(z)).flatten(1)
    return -residual.pow(2).sum(1) / (2 * sigma**2) - z.pow(2).sum(1) / 2


def langevin_step(
    generator: Generator,
    z: torch.Tensor,
    images: torch.Tensor,
    *,
    step_size: float,
    sigma: float,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Eq. (6): z + (s^2/2) grad_z log p(z|I) + s xi, with the gradient per example.

    grad_z log p(z|I) = grad_z log p(I, z): the sum over the batch of Eq. (5) has, for each
    example, exactly that example's gradient (it is not divided by the batch size).
    Returns the new z and log p(I, z) at the old z.
    """
    z = z.detach().requires_grad_(True)
    log_p = log_joint(generator, z, images, sigma)
    (grad,) = torch.autograd.grad(log_p.sum(), z)
    return (z + 0.5 * step_size**2 * grad + step_size * noise).detach(), log_p.detach()


@dataclass
class InferenceStats:
    """What one inference pass measured (means over all examples)."""

    log_joint_start: float
    log_joint_end: float
    latent_norm: float
    steps: int
    step_size: float


def short_run_inference(
    generator: Generator,
    images: torch.Tensor,
    z_init: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    sigma: float,
    batch_size: int,
    rng: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[torch.Tensor, InferenceStats]:
    """K-step Langevin dynamics (Eq. 7) from ``z_init`` for every image, in batches.

    ``images`` and ``z_init`` stay on the CPU; each batch is moved to ``device``. The noise
    xi_k ~ N(0, I) comes from ``rng`` (a CPU generator) so that results do not depend on the
    device's random stream; the batches are visited in order. Raises DivergenceError when a
    latent or log-density becomes non-finite.
    """
    n = images.shape[0]
    out = torch.empty_like(z_init)
    start_sum = end_sum = 0.0
    bar = tqdm(total=n * steps, desc="Langevin", unit="step", disable=not progress, unit_scale=True)
    for lo in range(0, n, batch_size):
        batch = images[lo : lo + batch_size].to(device)
        z = z_init[lo : lo + batch_size].to(device)
        for k in range(steps):
            noise = torch.randn(z.shape, generator=rng).to(device)
            z, log_p = langevin_step(generator, z, batch, step_size=step_size, sigma=sigma, noise=noise)
            if k == 0:
                start_sum += log_p.sum().item()
            bar.update(z.shape[0])
        if not torch.isfinite(z).all():
            raise DivergenceError(f"Langevin latents became non-finite in examples {lo}..{lo + len(z) - 1}")
        with torch.no_grad():
            end_sum += log_joint(generator, z, batch, sigma).sum().item()
        out[lo : lo + batch_size] = z.cpu()
    bar.close()
    stats = InferenceStats(
        log_joint_start=start_sum / n,
        log_joint_end=end_sum / n,
        latent_norm=out.norm(dim=1).mean().item(),
        steps=steps,
        step_size=step_size,
    )
    if not (torch.isfinite(torch.tensor([stats.log_joint_start, stats.log_joint_end])).all()):
        raise DivergenceError(f"log p(I, z) became non-finite ({stats.log_joint_start}, {stats.log_joint_end})")
    return out, stats
