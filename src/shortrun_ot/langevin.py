"""Short-run Langevin inference of the latent vectors (Sec. 4, Eqs. 5-7)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .models import batch_norm_per_group, deinterleave, interleave

Generator = Callable[[torch.Tensor], torch.Tensor]
#: log p(z) up to a constant, per example; ``None`` stands for the standard normal prior -||z||^2 / 2.
LogPrior = Callable[[torch.Tensor], torch.Tensor] | None
#: 1 where a pixel is observed, 0 where it is missing (broadcast over the images); ``None``: all observed.
Mask = torch.Tensor | None


class DivergenceError(RuntimeError):
    """Langevin dynamics produced non-finite latents (step size too large)."""


def standard_normal_log_prior(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) up to its constant, per example: -||z||^2 / 2."""
    return -z.pow(2).sum(1) / 2


def squared_residual(generator: Generator, z: torch.Tensor, images: torch.Tensor, mask: Mask = None) -> torch.Tensor:
    """Per-example ||I - g(z)||^2, or ||m * (I - g(z))||^2 over the observed pixels of a ``mask``."""
    residual = images - generator(z)
    if mask is not None:
        residual = residual * mask
    return residual.flatten(1).pow(2).sum(1)


def log_joint(generator: Generator, z: torch.Tensor, images: torch.Tensor, sigma: float,
              log_prior: LogPrior = None, mask: Mask = None) -> torch.Tensor:
    """Per-example log p(I, z) up to its constant (Eq. 5): -||I - g(z)||^2 / (2 sigma^2) + log p(z), with
    log p(z) = -||z||^2 / 2 unless ``log_prior`` gives another prior (LEBM's f(z) - ||z||^2 / 2).

    With a ``mask`` m, the likelihood of the observed pixels only: -||m * (I - g(z))||^2 / (2 sigma^2)
    (learning from incomplete images; missing pixels neither pull z nor the generator)."""
    return -squared_residual(generator, z, images, mask) / (2 * sigma**2) + (log_prior or standard_normal_log_prior)(z)


def langevin_step(
    generator: Generator,
    z: torch.Tensor,
    images: torch.Tensor,
    *,
    step_size: float,
    sigma: float,
    noise: torch.Tensor,
    log_prior: LogPrior = None,
    mask: Mask = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Eq. (6): z + (s^2/2) grad_z log p(z|I) + s xi, with the gradient per example.

    grad_z log p(z|I) = grad_z log p(I, z): the sum over the batch of Eq. (5) has, for each
    example, exactly that example's gradient (it is not divided by the batch size).
    Returns the new z and log p(I, z) at the old z.
    """
    return _step(lambda latents: log_joint(generator, latents, images, sigma, log_prior, mask), z, step_size, noise)


def _step(log_density, z: torch.Tensor, step_size: float, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z + (s^2/2) grad log_density(z) + s xi, per example; (the new z, log_density at the old z)."""
    z = z.detach().requires_grad_(True)
    log_p = log_density(z)
    (grad,) = torch.autograd.grad(log_p.sum(), z)
    return (z + 0.5 * step_size**2 * grad + step_size * noise).detach(), log_p.detach()


def prior_langevin(log_prior: LogPrior, z: torch.Tensor, *, steps: int, step_size: float,
                   rng: torch.Generator) -> torch.Tensor:
    """``steps`` Langevin steps z <- z + (s^2/2) grad log p(z) + s xi on the prior alone (no image): the
    sampler of a latent-space energy-based prior (Pang et al. 2020, Eq. 10). Noise from ``rng`` (CPU)."""
    log_prior = log_prior or standard_normal_log_prior
    for _ in range(steps):
        noise = torch.randn(z.shape, generator=rng).to(z.device)
        z, _ = _step(log_prior, z, step_size, noise)
    if not torch.isfinite(z).all():
        raise DivergenceError(f"prior Langevin latents became non-finite (step size {step_size}, {steps} steps)")
    return z


@dataclass
class InferenceStats:
    """What one inference pass measured (means over all examples)."""

    log_joint_start: float
    log_joint_end: float
    latent_norm: float
    steps: int
    step_size: float
    # only when the opt-in back-off fired: [{"examples": [first, last], "step_size": s}, ...]
    backoff: list | None = None


def _chain(generator, batch, z, noise, *, step_size, sigma, log_prior=None, mask=None):
    """K = len(noise) Langevin steps; (z_K, log p at z_0, per-step finiteness flags).

    Nothing here waits for the device, so that the chain can be captured as a CUDA graph;
    on the CPU (where checking costs nothing) it stops at the first non-finite step.
    """
    log_p_start, finite = None, []
    for k in range(len(noise)):
        z, log_p = langevin_step(generator, z, batch, step_size=step_size, sigma=sigma, noise=noise[k],
                                 log_prior=log_prior, mask=mask)
        log_p_start = log_p if k == 0 else log_p_start
        finite.append(torch.isfinite(log_p).all())
        if z.device.type == "cpu" and not finite[-1]:  # arithmetic on Inf/NaN is slow and pointless
            break
    return z, log_p_start, torch.stack(finite)


class GraphedChain:
    """The K-step chain for one batch shape captured once as a CUDA graph, then replayed per batch.

    Replaying the same kernels on copied-in inputs removes the per-kernel launch cost, which
    matters when kernels are short (small batches or models). At the paper's batch of 2,000 on an
    H100 the chain is bound by GPU work and the graph gained nothing, with the same numbers as the
    eager chain (docs/performance.md).
    """

    WARMUP_STEPS = 3

    def __init__(self, generator, batch, z, noise, *, step_size, sigma, log_prior=None):
        self.inputs = (batch.clone(), z.clone(), noise.clone())
        chain = lambda b, z0, xi: _chain(generator, b, z0, xi, step_size=step_size, sigma=sigma,  # noqa: E731
                                         log_prior=log_prior)
        side = torch.cuda.Stream(batch.device)
        side.wait_stream(torch.cuda.current_stream(batch.device))
        with torch.cuda.stream(side):  # warm-up outside the capture (autograd, cuBLAS handles)
            chain(self.inputs[0], self.inputs[1], self.inputs[2][: self.WARMUP_STEPS])
        torch.cuda.current_stream(batch.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = chain(*self.inputs)

    def __call__(self, batch, z, noise):
        for static, value in zip(self.inputs, (batch, z, noise)):
            static.copy_(value)
        self.graph.replay()
        return tuple(out.clone() for out in self.outputs)


def _per_batch_norm(generator: Generator, groups: int) -> Generator:
    """``generator`` for ``groups`` equal, interleaved batches at once, batch norm per batch
    (``batch_norm_per_group``)."""
    if groups == 1:
        return generator

    def grouped(z):
        with batch_norm_per_group(generator, groups):
            return generator(z)

    return grouped


def _run_block(generator, batch, z, *, groups, steps, step_size, sigma, rng, lo, graphs, log_prior=None,
               mask=None):
    """K Langevin steps for ``groups`` consecutive batches of equal size at once, batch norm per batch;
    (z, each batch's sum of log p at the start, at the end) or DivergenceError.

    Each batch's noise is drawn in turn, the same draws as for the batches one after another. The block
    runs with its batches interleaved, the layout of ``batch_norm_per_group``.
    ``graphs`` (a dict, or None for eager execution) caches one GraphedChain per block shape.
    """
    noise = torch.cat([torch.randn((steps, len(z) // groups, z.shape[1]), generator=rng) for _ in range(groups)],
                      dim=1).to(z.device)
    if groups > 1:
        batch, z, mask = (None if t is None else interleave(t, groups) for t in (batch, z, mask))
        noise = interleave(noise, groups, dim=1)
    generator = _per_batch_norm(generator, groups)
    if graphs is None:
        z, log_p_start, finite = _chain(generator, batch, z, noise, step_size=step_size, sigma=sigma,
                                        log_prior=log_prior, mask=mask)
    else:
        key = (groups, *z.shape)
        if key not in graphs:
            graphs[key] = GraphedChain(generator, batch, z, noise, step_size=step_size, sigma=sigma,
                                       log_prior=log_prior)
        z, log_p_start, finite = graphs[key](batch, z, noise)
    if not finite.all():
        first = int((~finite).nonzero()[0]) + 1
        raise DivergenceError(
            f"log p(I, z) became non-finite at Langevin step {first} of {steps} in examples {lo}..{lo + len(z) - 1}"
        )
    if not torch.isfinite(z).all():
        raise DivergenceError(f"Langevin latents became non-finite in examples {lo}..{lo + len(z) - 1}")
    with torch.no_grad():
        log_p_end = log_joint(generator, z, batch, sigma, log_prior, mask)
    if groups > 1:
        z, log_p_start, log_p_end = (deinterleave(t, groups) for t in (z, log_p_start, log_p_end))
    start, end = ([part.sum().item() for part in log_p.chunk(groups)] for log_p in (log_p_start, log_p_end))
    if not all(map(math.isfinite, start + end)):
        raise DivergenceError(
            f"log p(I, z) became non-finite ({sum(start)}, {sum(end)}) in examples {lo}..{lo + len(z) - 1}"
        )
    return z, start, end


def _run_with_backoff(generator, batch, z, *, backoff, step_size, rng, graphs, **chain):
    """One batch's chain (``_run_block``), retried up to ``backoff`` times from the same starting latents and
    noise with half the step size; (z, start, end, the step size that worked) or DivergenceError."""
    rng_state, size = rng.get_state(), step_size
    for attempt in range(backoff + 1):
        try:
            z_end, (start,), (end,) = _run_block(generator, batch, z, groups=1, step_size=size, rng=rng,
                                                 graphs=graphs if size == step_size else None, **chain)
            return z_end, start, end, size
        except DivergenceError as exc:
            if attempt == backoff:
                if backoff:
                    raise DivergenceError(f"{exc}, even after {backoff} halvings of the step size to {size}") from None
                raise
            rng.set_state(rng_state)  # the same noise again
            size /= 2


def _blocks(n: int, batch_size: int, batches_at_once: int):
    """(first, end, number of batches) of each block: up to ``batches_at_once`` consecutive batches of
    ``batch_size``, then the last, smaller batch alone."""
    full = n // batch_size
    for first in range(0, full, batches_at_once):
        yield first * batch_size, min(first + batches_at_once, full) * batch_size, min(batches_at_once, full - first)
    if n % batch_size:
        yield full * batch_size, n, 1


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
    backoff: int = 0,
    cuda_graph: bool = False,
    log_prior: LogPrior = None,
    mask: Mask = None,
    batches_at_once: int = 1,
) -> tuple[torch.Tensor, InferenceStats]:
    """K-step Langevin dynamics (Eq. 7) from ``z_init`` for every image, in batches.

    ``images`` and ``z_init`` stay on the CPU; each batch is moved to ``device``. The noise
    xi_k ~ N(0, I) comes from ``rng`` (a CPU generator) so that results do not depend on the
    device's random stream; the batches are visited in order. Raises DivergenceError when a
    latent or log-density becomes non-finite.

    ``backoff`` > 0 (opt-in) retries a diverged batch up to that many times, each time from the
    same starting latents and noise with half the step size; ``stats.backoff`` lists what fired.
    ``cuda_graph`` replays each batch's chain as a CUDA graph (GraphedChain) on a CUDA device.
    ``log_prior`` replaces the standard normal prior of Eq. (5) (LEBM's learned prior). ``mask`` (one per
    image, like ``images``, on the CPU) keeps the likelihood to the observed pixels (``log_joint``); masked
    chains run eagerly (no CUDA graph).

    ``batches_at_once`` > 1 runs that many consecutive batches (an ``nn.Module`` generator) through the
    generator together, each batch normalised with its own batch-norm statistics
    (``models.batch_norm_per_group``) and driven by its own noise: the result of the batches one after
    another, in fewer, larger matrix products (docs/performance.md). A block that diverges runs again batch
    by batch from the same noise, so that back-off and errors work per batch as without blocks.
    """
    if batches_at_once < 1:
        raise ValueError(f"batches_at_once must be at least 1, got {batches_at_once}")
    n = images.shape[0]
    out = torch.empty_like(z_init)
    start_sum = end_sum = 0.0
    fired = []
    device = torch.device(device)
    graphs = {} if cuda_graph and device.type == "cuda" and mask is None else None
    chain = {"steps": steps, "sigma": sigma, "log_prior": log_prior}
    bar = tqdm(total=n * steps, desc="Langevin", unit="step", disable=not progress, unit_scale=True)

    def on_device(lo, hi):
        return {"batch": images[lo:hi].to(device), "z": z_init[lo:hi].to(device),
                "mask": None if mask is None else mask[lo:hi].to(device)}

    for lo, hi, groups in _blocks(n, batch_size, batches_at_once):
        results = None
        if groups > 1:
            rng_state = rng.get_state()
            try:
                z, start, end = _run_block(generator, **on_device(lo, hi), groups=groups, step_size=step_size,
                                           rng=rng, lo=lo, graphs=graphs, **chain)
                results = [(z_part, s, e, step_size) for z_part, s, e in zip(z.chunk(groups), start, end)]
            except DivergenceError:  # again batch by batch from the same noise
                rng.set_state(rng_state)
        if results is None:
            results = [_run_with_backoff(generator, **on_device(first, min(first + batch_size, hi)), backoff=backoff,
                                         step_size=step_size, rng=rng, lo=first, graphs=graphs, **chain)
                       for first in range(lo, hi, batch_size)]
        for first, (z, start, end, size) in zip(range(lo, hi, batch_size), results):
            if size != step_size:
                fired.append({"examples": [first, first + len(z) - 1], "step_size": size})
            start_sum += start
            end_sum += end
            out[first : first + len(z)] = z.cpu()
        bar.update((hi - lo) * steps)
    bar.close()
    stats = InferenceStats(
        log_joint_start=start_sum / n,
        log_joint_end=end_sum / n,
        latent_norm=out.norm(dim=1).mean().item(),
        steps=steps,
        step_size=step_size,
        backoff=fired or None,
    )
    if not math.isfinite(stats.log_joint_start + stats.log_joint_end):
        raise DivergenceError(f"log p(I, z) became non-finite ({stats.log_joint_start}, {stats.log_joint_end})")
    return out, stats


def chain_divergence(generator: Generator, images: torch.Tensor, z: torch.Tensor, *, steps: int, step_size: float,
                     sigma: float, perturbation: float, rng: torch.Generator,
                     log_prior: LogPrior = None) -> torch.Tensor:
    """Distance between two Langevin chains (Eq. 6) driven by the same noise, one started at ``z``, the
    other at ``z`` plus a random perturbation of norm ``perturbation`` per example.

    Returns the per-example distances after each step, shape (steps, n). For a posterior whose
    log-density has Hessian -H (H positive definite), the map z -> z + (s^2/2) grad log p is a
    contraction along an eigenvector of H with eigenvalue lambda exactly when |1 - s^2 lambda / 2| < 1,
    i.e. s < 2 / sqrt(lambda_max): below that the two chains merge, beyond it they separate
    exponentially and the chain no longer samples the posterior (it is chaotic).
    """
    direction = torch.randn(z.shape, generator=rng).to(z.device)
    other = z + perturbation * direction / direction.norm(dim=1, keepdim=True)
    distances = []
    for _ in range(steps):
        noise = torch.randn(z.shape, generator=rng).to(z.device)
        z, _ = langevin_step(generator, z, images, step_size=step_size, sigma=sigma, noise=noise, log_prior=log_prior)
        other, _ = langevin_step(generator, other, images, step_size=step_size, sigma=sigma, noise=noise,
                                 log_prior=log_prior)
        distances.append((z - other).norm(dim=1).cpu())
    return torch.stack(distances)
