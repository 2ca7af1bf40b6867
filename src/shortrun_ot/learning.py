"""Learning: Adam on the (z, I) pairs of the short-run method (Eq. 5; Alg. 1, line 13), and one epoch of
minibatch Adam on any per-batch loss (the encoder-based methods)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .langevin import squared_residual


def reconstruction_loss(generator: nn.Module, z: torch.Tensor, images: torch.Tensor, sigma: float,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Batch mean of ||I - g(z)||^2 / (2 sigma^2), the negative of Eq. (5) in theta; with a ``mask`` m
    (1 observed, 0 missing) ||m * (I - g(z))||^2 / (2 sigma^2), the observed pixels' likelihood."""
    return squared_residual(generator, z, images, mask).mean() / (2 * sigma**2)


def make_optimizer(module: nn.Module, lr: float, beta1: float, beta2: float) -> torch.optim.Adam:
    """Adam over the parameters of ``module`` (the short-run method uses the supplementary's betas 0.5, 0.99)."""
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(beta1, beta2))


@dataclass
class LearningStats:
    """What one learning step measured."""

    loss_first_pass: float
    loss_last_pass: float
    grad_norm: float
    passes: int
    updates: int


def learn(
    generator: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    latents: torch.Tensor,
    *,
    passes: int,
    batch_size: int,
    sigma: float,
    rng: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
    mask: torch.Tensor | None = None,
) -> LearningStats:
    """``passes`` (L2 of Table 6) shuffled minibatch passes of Adam over the pairs (z_i, I_i); with a
    ``mask`` per image, on the likelihood of its observed pixels."""
    generator.train()
    n = images.shape[0]
    images, latents = images.to(device), latents.to(device)  # one copy; batches are gathered on the device
    mask = None if mask is None else mask.to(device)
    pass_losses, grad_norms, updates = [], [], 0
    bar = tqdm(total=passes * n, desc="learning", unit="img", disable=not progress, unit_scale=True)
    for _ in range(passes):
        order = torch.randperm(n, generator=rng).to(device)
        total = torch.zeros((), device=device)  # summed on the device: no wait for it per update
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            loss = reconstruction_loss(generator, latents[idx], images[idx], sigma,
                                       None if mask is None else mask[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norms.append(torch.nn.utils.clip_grad_norm_(generator.parameters(), float("inf")))
            optimizer.step()
            total += loss.detach() * len(idx)
            updates += 1
            bar.update(len(idx))
        pass_losses.append(total.item() / n)
    bar.close()
    return LearningStats(
        loss_first_pass=pass_losses[0],
        loss_last_pass=pass_losses[-1],
        grad_norm=torch.stack(grad_norms).mean().item(),
        passes=passes,
        updates=updates,
    )


def train_epoch(modules: nn.Module, optimizer: torch.optim.Optimizer, data: torch.Tensor, batch_loss, *,
                batch_size: int, rng: torch.Generator, device, progress: bool = False,
                desc: str = "epoch", after_step=None) -> dict[str, float]:
    """One shuffled pass of Adam over ``data``; ``batch_loss(batch) -> (loss, {name: value})``;
    ``after_step(batch) -> {name: value}``, if given, runs after each step (WAE-GAN's adversary update).

    Returns the mean loss and the mean of each named value over the examples, checked for
    finiteness. ``rng`` orders the minibatches; any other randomness (reparameterisation noise)
    is the caller's, drawn from its own seeded stream.
    """
    modules.train()
    n = len(data)
    order = torch.randperm(n, generator=rng)
    totals: dict[str, float] = {}
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, unit_scale=True)
    for lo in range(0, n, batch_size):
        batch = data[order[lo:lo + batch_size]].to(device)
        loss, values = batch_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            values = {**values, **after_step(batch)}
        for name, value in {"loss": loss, **values}.items():
            totals[name] = totals.get(name, 0.0) + float(value.detach() if torch.is_tensor(value) else value) * len(batch)
        bar.update(len(batch))
    bar.close()
    means = {name: total / n for name, total in totals.items()}
    if not all(map(math.isfinite, means.values())):
        raise FloatingPointError(f"the training loss became non-finite ({means}); lower the learning rate")
    return means
