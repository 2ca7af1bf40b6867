"""Evaluation of a trained run: reconstruction MSE and FID (Table 1), anomaly AUPRC (Table 2).

Definitions (README, "Metrics"):
- MSE: per-pixel mean squared error on the [0, 1] scale between images and g(z), (a) on the
  training images with their persistent latents, (b) on held-out test images with latents from a
  noise-initialised short-run Langevin of K_test steps.
- FID: pytorch-fid's Frechet distance between Inception pool3 statistics of generated images,
  z ~ N(0, I), and of real training images.
- Anomaly score: -log p(I, z) (Eq. 5) with z from noise-initialised short-run Langevin (Sec. 6.3).
The generator is used in eval mode (batch norm with its running statistics) throughout.
"""

from __future__ import annotations

import torch

from . import data
from .config import stage_rng
from .langevin import log_joint, short_run_inference
from .metrics import auprc, feature_statistics, frechet_distance, inception_features, reconstruction_mse
from .ot import assign


def generate(generator, n: int, latent_dim: int, *, seed: int, batch_size: int, device) -> torch.Tensor:
    """n images g(z), z ~ N(0, I), on the [-1, 1] scale (CPU tensor)."""
    z = torch.randn((n, latent_dim), generator=stage_rng(seed, 0, "samples"))
    with torch.no_grad():
        return torch.cat([generator(z[i : i + batch_size].to(device)).cpu() for i in range(0, n, batch_size)])


def infer_from_noise(generator, images: torch.Tensor, settings: dict, *, steps: int, batch_size: int, device,
                     stage: str, progress: bool = False) -> torch.Tensor:
    """Noise-initialised short-run Langevin (Eq. 7) with the run's step size and sigma."""
    z0 = torch.randn((len(images), settings["latent_dim"]), generator=stage_rng(settings["seed"], 0, f"{stage}-init"))
    z, _ = short_run_inference(
        generator, images, z0, steps=steps, step_size=settings["langevin"]["step_size"], sigma=settings["sigma"],
        batch_size=batch_size, rng=stage_rng(settings["seed"], 0, stage), device=device, progress=progress,
    )
    return z


def reconstruct(generator, z: torch.Tensor, *, batch_size: int, device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([generator(z[i : i + batch_size].to(device)).cpu() for i in range(0, len(z), batch_size)])


def real_feature_statistics(images: torch.Tensor, inception, *, batch_size: int, device, progress: bool = False):
    """(mu, sigma) of Inception features of real images on the [-1, 1] scale."""
    features = inception_features(data.to_unit_scale(images), inception, batch_size, device, progress)
    return feature_statistics(features)


def evaluate_run(generator, settings: dict, train_images: torch.Tensor, train_latents: torch.Tensor,
                 test_images: torch.Tensor, prior_sample: torch.Tensor, inception, real_stats, *,
                 fid_samples: int, test_steps: int, batch_size: int, device, progress: bool = False) -> dict:
    """Table 1 metrics of one trained generator (see the module docstring for the definitions)."""
    generator.eval()
    train_mse = reconstruction_mse(train_images, reconstruct(generator, train_latents, batch_size=batch_size, device=device))
    test_latents = infer_from_noise(generator, test_images, settings, steps=test_steps, batch_size=batch_size,
                                    device=device, stage="test-langevin", progress=progress)
    test_mse = reconstruction_mse(test_images, reconstruct(generator, test_latents, batch_size=batch_size, device=device))
    samples = generate(generator, fid_samples, settings["latent_dim"], seed=settings["seed"], batch_size=batch_size,
                       device=device)
    mu, sigma = feature_statistics(inception_features(data.to_unit_scale(samples), inception, batch_size, device, progress))
    ot = assign(train_latents, prior_sample, seed=settings["seed"])
    return {
        "mse_train": train_mse,
        "mse_test": test_mse,
        "train_images": len(train_images),
        "test_images": len(test_images),
        "test_langevin_steps": test_steps,
        "fid": frechet_distance(mu, sigma, *real_stats[:2]),
        "fid_samples": fid_samples,
        "fid_real_images": int(real_stats[2]),
        "ot_cost": ot.cost,
        "latent_norm": train_latents.norm(dim=1).mean().item(),
    }


def anomaly_scores(generator, settings: dict, images: torch.Tensor, *, steps: int, batch_size: int, device,
                   progress: bool = False) -> torch.Tensor:
    """-log p(I, z) (Eq. 5, up to its constant) with z from noise-initialised short-run Langevin."""
    generator.eval()
    z = infer_from_noise(generator, images, settings, steps=steps, batch_size=batch_size, device=device,
                         stage="anomaly-langevin", progress=progress)
    with torch.no_grad():
        return torch.cat([
            -log_joint(generator, z[i : i + batch_size].to(device), images[i : i + batch_size].to(device),
                       settings["sigma"]).cpu()
            for i in range(0, len(images), batch_size)
        ])


def evaluate_anomaly(generator, settings: dict, test_images: torch.Tensor, is_anomaly: torch.Tensor, *,
                     steps: int, batch_size: int, device, progress: bool = False) -> dict:
    """AUPRC of the anomaly score with the held-out digit as the positive class (Table 2)."""
    scores = anomaly_scores(generator, settings, test_images, steps=steps, batch_size=batch_size, device=device,
                            progress=progress)
    return {
        "auprc": auprc(scores.numpy(), is_anomaly.numpy()),
        "heldout_digit": settings["heldout_digit"],
        "seed": settings["seed"],
        "test_images": len(test_images),
        "anomalies": int(is_anomaly.sum()),
        "test_langevin_steps": steps,
    }
