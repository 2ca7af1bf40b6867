"""One evaluation protocol for every method: MSE, FID, distance to the prior (Table 1), AUPRC (Table 2).

Every trained system is a :class:`~shortrun_ot.methods.base.TrainedModel`; the definitions
(docs/protocol.md, "Metrics") are the same for all of them:

- MSE: per-pixel mean squared error on the [0, 1] scale between images and their reconstructions,
  (a) on the training images, decoded from the method's latent population (ours: the persistent
  latents the last inference produced; encoder methods: the encoder means), (b) on held-out test
  images, through ``TrainedModel.reconstruct`` (ours: noise-initialised short-run Langevin of
  K_test steps; encoder methods: encode, then decode).
- FID: pytorch-fid's Frechet distance between Inception pool3 statistics of ``TrainedModel.sample``
  and of real training images.
- Distance of the latent population to the prior: the OT cost (mean squared distance of the optimal
  assignment) to a prior sample of the same size, drawn from the evaluation's own stream (the same
  for every method); beside it the OT cost between two independent prior samples of that size (the
  value a population drawn from the prior itself would get), and the Frechet distance of the
  population's Gaussian fit to N(0, I).
- Anomaly score: ``TrainedModel.anomaly_scores`` (ours: -log p(I, z), Sec. 6.3; VAE: the negative
  ELBO); AUPRC with the held-out digit as the positive class.
"""

from __future__ import annotations

import math
import time

import torch

from . import data
from .config import stage_rng
from .methods.base import TrainedModel
from .metrics import (
    auprc,
    feature_statistics,
    frechet_distance,
    inception_features,
    latent_frechet_distance,
    reconstruction_mse,
)
from .ot import assign


def real_feature_statistics(images: torch.Tensor, inception, *, batch_size: int, device,
                            progress: bool = False):
    """(mu, sigma) of Inception features of real images on the [-1, 1] scale."""
    features = inception_features(data.to_unit_scale(images), inception, batch_size, device, progress)
    return feature_statistics(features)


def prior_distance(latents: torch.Tensor, seed: int) -> dict:
    """OT cost of ``latents`` to a prior sample of the same size, its two-sample floor, and the Frechet distance."""
    n, d = latents.shape
    prior = torch.randn((n, d), generator=stage_rng(seed, 0, "evaluation-prior"), dtype=latents.dtype)
    second = torch.randn((n, d), generator=stage_rng(seed, 0, "evaluation-prior-2"), dtype=latents.dtype)
    return {
        "ot_cost": assign(latents, prior, seed=seed).cost,
        "ot_cost_prior_floor": assign(second, prior, seed=seed).cost,
        "latent_fd": latent_frechet_distance(latents),
        "latent_norm": latents.norm(dim=1).mean().item(),
    }


def evaluate_model(model: TrainedModel, train_images: torch.Tensor, test_images: torch.Tensor, inception,
                   real_stats, *, fid_samples: int, progress: bool = False,
                   occlusion: torch.Tensor | None = None) -> dict:
    """Table 1 metrics of one trained model (see the module docstring for the definitions).

    ``occlusion``: for a model that learned from occluded images, their masks (1 observed, 0 missing);
    ``train_images`` are then the complete originals, ``mse_train`` is over all their pixels and
    ``mse_train_observed`` / ``mse_train_missing`` split it into the pixels the model saw and those it
    had to fill in (unsupervised inpainting)."""
    seconds = {}
    start = time.perf_counter()
    latents = model.latent_population(train_images)
    reconstructions = model.decode(latents)
    mse_train = reconstruction_mse(train_images, reconstructions)
    occluded = {} if occlusion is None else {
        "mse_train_observed": reconstruction_mse(train_images, reconstructions, occlusion),
        "mse_train_missing": reconstruction_mse(train_images, reconstructions, 1 - occlusion),
        "missing_fraction": float(1 - occlusion.mean()),
    }
    mse_test = reconstruction_mse(test_images, model.reconstruct(test_images))
    seconds["mse"] = time.perf_counter() - start
    start = time.perf_counter()
    samples = model.sample(fid_samples)
    features = inception_features(data.to_unit_scale(samples), inception, model.protocol.batch_size, model.device,
                                  progress)
    mu, sigma = feature_statistics(features)
    seconds["fid"] = time.perf_counter() - start
    start = time.perf_counter()
    distance = prior_distance(latents, model.settings["seed"])
    seconds["prior_distance"] = time.perf_counter() - start
    return {
        "mse_train": mse_train,
        **occluded,
        "mse_test": mse_test,
        "train_images": len(train_images),
        "test_images": len(test_images),
        "test_langevin_steps": model.protocol.langevin_steps,
        "fid": frechet_distance(mu, sigma, *real_stats[:2]),
        "fid_samples": fid_samples,
        "fid_real_images": int(real_stats[2]),
        **distance,
        "evaluation_seconds": seconds,
    }


def evaluate_anomaly(model: TrainedModel, test_images: torch.Tensor, is_anomaly: torch.Tensor) -> dict:
    """AUPRC of the model's anomaly score with the held-out digit as the positive class (Table 2)."""
    scores = model.anomaly_scores(test_images)
    return {
        "auprc": auprc(scores.numpy(), is_anomaly.numpy()),
        "heldout_digit": model.settings["heldout_digit"],
        "seed": model.settings["seed"],
        "test_images": len(test_images),
        "anomalies": int(is_anomaly.sum()),
        "test_langevin_steps": model.protocol.langevin_steps,
    }


def chain_stability(model: TrainedModel, images: torch.Tensor, latents: torch.Tensor, *, step_sizes: list[float],
                    steps: int, perturbation: float) -> list[dict]:
    """Where the inference chains turn chaotic: for each step size s, two Langevin chains of ``steps``
    steps from the given latents and a copy perturbed by ``perturbation`` (same noise). ``growth`` is
    the median over images of the final distance over the initial one: below 1 the chains merge (the
    dynamics contract), above 1 they separate exponentially at the rate ``lyapunov`` per step."""
    rows = []
    for step_size in step_sizes:
        distances = model.chain_divergence(images, latents, step_size=step_size, steps=steps,
                                           perturbation=perturbation)
        median = distances.median(dim=1).values
        growth = median[-1].item() / perturbation
        rows.append({
            "step_size": step_size, "steps": steps, "perturbation": perturbation, "images": len(images),
            "growth": growth, "lyapunov": math.log(growth) / steps if growth > 0 else float("-inf"),
            "chaotic": growth > 1, "median_distance": median.tolist(),
        })
    return rows
