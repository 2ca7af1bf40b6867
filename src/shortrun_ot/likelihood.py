"""Likelihoods p(I | z) of the decoders, as negative log-densities c(I, z) = -log p(I | g(z)).

Two families, chosen per run by ``likelihood``:

* ``gaussian``: N(I; g(z), sigma^2 I), the paper's Eq. (1) and the likelihood of every image model
  of this project (sigma = 0.3), c = ||I - g(z)||^2 / (2 sigma^2) + D (log sigma + log(2 pi) / 2);
* ``bernoulli``: pixel intensities on [0, 1] as Bernoulli means (the Coupled VAE's MNIST
  experiment, Hao & Shafto, Sec. 5), p = (g(z) + 1) / 2 from the Tanh output, clamped to
  [1e-6, 1 - 1e-6], c = -sum_k [x_k log p_k + (1 - x_k) log(1 - p_k)] with x = (I + 1) / 2; grey values
  are used as they are (no binarisation).

``negative_log_likelihood`` gives c for pairs (image k, decoding k); ``pairwise_negative_log_likelihood``
all n x m pairs at once, as matrix products (the Coupled VAE's cost matrix, Eq. 18).
"""

from __future__ import annotations

import math

import torch

BERNOULLI_CLAMP = 1e-6
LIKELIHOODS = ("gaussian", "bernoulli")


def gaussian_nll(images: torch.Tensor, means: torch.Tensor, log_sigma: torch.Tensor | float) -> torch.Tensor:
    """-log N(images; means, sigma^2 I) per example, sigma = exp(log_sigma) (a float or a scalar tensor)."""
    log_sigma = torch.as_tensor(log_sigma, dtype=images.dtype, device=images.device)
    squared = (images - means).flatten(1).pow(2).sum(1)
    pixels = images[0].numel()
    return squared / (2 * torch.exp(2 * log_sigma)) + pixels * (log_sigma + 0.5 * math.log(2 * math.pi))


def bernoulli_probabilities(decoded: torch.Tensor) -> torch.Tensor:
    """Bernoulli means from decodings on the [-1, 1] scale, clamped away from 0 and 1."""
    return ((decoded + 1) / 2).clamp(BERNOULLI_CLAMP, 1 - BERNOULLI_CLAMP)


def bernoulli_nll(images: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """-sum_k [x_k log p_k + (1 - x_k) log(1 - p_k)] per example, x = (images + 1) / 2, p from ``decoded``."""
    x, p = (images + 1) / 2, bernoulli_probabilities(decoded)
    return -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)


def likelihood_name(settings: dict) -> str:
    """The run's ``likelihood`` (a key with the schema default ``gaussian``, so runs from before it keep
    their settings), checked."""
    name = settings.get("likelihood", "gaussian")
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return name


def negative_log_likelihood(images: torch.Tensor, decoded: torch.Tensor, settings: dict) -> torch.Tensor:
    """c(images[k], z_k) per example k for the run's ``likelihood`` (and ``sigma``, Gaussian)."""
    if likelihood_name(settings) == "gaussian":
        return gaussian_nll(images, decoded, math.log(settings["sigma"]))
    return bernoulli_nll(images, decoded)


def pairwise_negative_log_likelihood(images: torch.Tensor, decoded: torch.Tensor, settings: dict, *,
                                     rows: str = "images") -> torch.Tensor:
    """c(images[i], g(z_j)) for n images and m decodings g(z_j), every pair: the entries of
    ``negative_log_likelihood``, as one matrix product plus a term per image and a term per decoding.
    An (n, m) matrix, or (m, n) with ``rows="decodings"`` (each computed in that layout, so that sums
    along a row run over contiguous memory)."""
    if rows not in ("images", "decodings"):
        raise ValueError(f"rows must be 'images' or 'decodings', got {rows!r}")
    x, g = images.flatten(1), decoded.flatten(1)
    pixels = x.shape[1]
    if likelihood_name(settings) == "gaussian":
        # ||x - g||^2 / (2 sigma^2) + const = (||x||^2 + ||g||^2 - 2 <x, g>) / (2 sigma^2) + const, at least const
        sigma = settings["sigma"]
        constant = pixels * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
        per_image, per_decoding = x.pow(2).sum(1) / (2 * sigma**2) + constant, g.pow(2).sum(1) / (2 * sigma**2)
        weights, features, scale, floor = x, g, -1 / sigma**2, constant
    else:
        # -sum_k [x_k log p_k + (1 - x_k) log(1 - p_k)] = -<x, log p - log(1 - p)> - sum_k log(1 - p_k)
        x, p = (x + 1) / 2, bernoulli_probabilities(g)
        log_q = (1 - p).log()
        per_image, per_decoding = torch.zeros(len(x), dtype=x.dtype, device=x.device), -log_q.sum(1)
        weights, features, scale, floor = x, p.log() - log_q, -1.0, None
    if rows == "images":
        costs = torch.addmm(per_image[:, None] + per_decoding[None, :], weights, features.T, alpha=scale)
    else:
        costs = torch.addmm(per_decoding[:, None] + per_image[None, :], features, weights.T, alpha=scale)
    return costs if floor is None else costs.clamp_min(floor)
