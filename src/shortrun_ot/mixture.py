"""The Coupled VAE's mixture-of-Gaussians experiment (Hao & Shafto, Sec. 5, Tables 1 and 2, Figs. 1 and 2).

Data: 25 isotropic Gaussians, standard deviation 0.05, means on the grid {-2, -1, 0, 1, 2}^2, 300 points
each (7,500), drawn once with ``DATA_SEED`` (the same data for every model and seed). Every model has
the fully connected encoder and decoder of ``models.FullyConnected`` and a 2-D N(0, I) prior, and is
trained in memory (``pipeline.train_in_memory``): a run takes seconds, too little to cache per stage.

Metrics (their "following Azadi et al."):
* high-density ratio: each generated point is assigned to its nearest mode; it is high-density when
  within 4 standard deviations (0.2) of it; the fraction of such points;
* modes covered (not in the paper): modes holding at least one high-density point; a model that maps
  every draw onto one mode scores a high-density ratio near 1 with one mode covered;
* standard deviation within modes: over the high-density points, the root mean square of their
  offsets from their modes per coordinate, sqrt(sum ||x - mu||^2 / (2 N_hd)), pooled over modes and
  both coordinates (the true value is 0.05, slightly less after the 4-sigma cut);
* MMD between the prior and the aggregate posterior: the unbiased MMD^2 estimate
  (``metrics.gaussian_kernel_mmd``) with a Gaussian kernel of bandwidth ``MMD_BANDWIDTH`` = 1 (the
  prior's scale) between one posterior draw per training point (``TrainedModel.posterior_samples``)
  and as many prior draws. The paper names no kernel; its values are not comparable in scale.
"""

from __future__ import annotations

import itertools

import torch

from .config import stage_rng
from .methods.base import EvaluationProtocol, StageContext, TrainedModel
from . import metrics
from .pipeline import train_in_memory

GRID = (-2.0, -1.0, 0.0, 1.0, 2.0)
MODE_STD = 0.05
POINTS_PER_MODE = 300
DATA_SEED = 0
HIGH_DENSITY_RADIUS = 4  # in standard deviations
MMD_BANDWIDTH = 1.0


def mode_means() -> torch.Tensor:
    """The 25 means (25, 2), row-major over the grid."""
    return torch.tensor(list(itertools.product(GRID, GRID)))


def mixture_points(per_mode: int = POINTS_PER_MODE, seed: int = DATA_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_mode`` points of each Gaussian (25 * per_mode, 2) and the index of their mode."""
    generator = torch.Generator().manual_seed(seed)
    means = mode_means()
    labels = torch.arange(len(means)).repeat_interleave(per_mode)
    return means[labels] + MODE_STD * torch.randn((len(labels), 2), generator=generator), labels


def nearest_modes(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of each point's nearest mode and the distance to it."""
    distances = torch.cdist(points.double(), mode_means().double())
    distance, index = distances.min(1)
    return index, distance


def high_density(points: torch.Tensor) -> torch.Tensor:
    """Whether each point lies within 4 standard deviations of its nearest mode."""
    return nearest_modes(points)[1] <= HIGH_DENSITY_RADIUS * MODE_STD


def high_density_ratio(points: torch.Tensor) -> float:
    return float(high_density(points).double().mean())


def modes_covered(points: torch.Tensor) -> int:
    """How many of the 25 modes hold at least one high-density point."""
    index, _ = nearest_modes(points)
    return len(set(index[high_density(points)].tolist()))


def std_within_modes(points: torch.Tensor) -> float:
    """RMS per-coordinate offset of the high-density points from their modes (NaN when there are none)."""
    index, distance = nearest_modes(points)
    keep = distance <= HIGH_DENSITY_RADIUS * MODE_STD
    return float((distance[keep].pow(2).sum() / (2 * keep.sum())).sqrt())


def aggregate_posterior_mmd(posterior: torch.Tensor, seed: int) -> float:
    """MMD^2 between posterior draws (one per training point) and as many N(0, I) draws."""
    prior = torch.randn(posterior.shape, generator=stage_rng(seed, 0, "mmd-prior"))
    return float(metrics.gaussian_kernel_mmd(posterior.double(), prior.double(), [MMD_BANDWIDTH]))


def evaluate(model: TrainedModel, points: torch.Tensor, *, samples: int, seed: int, posterior_point: int,
             posterior_draws: int) -> tuple[dict, dict]:
    """The three metrics of one trained model, and the point sets of the paper's Fig. 1 columns."""
    generator = stage_rng(seed, 0, "mixture-posterior")
    generated = model.sample(samples)
    aggregate = model.posterior_samples(points, generator)
    one_point = model.posterior_samples(points[posterior_point].repeat(posterior_draws, 1), generator)
    metrics = {"high_density_ratio": high_density_ratio(generated), "modes_covered": modes_covered(generated),
               "std_within_modes": std_within_modes(generated),
               "mmd": aggregate_posterior_mmd(aggregate, seed), "samples": samples}
    panels = {"samples": generated, "reconstructions": model.reconstruct(points), "codes": model.encode(points),
              "aggregate_posterior": aggregate, "posterior": one_point,
              "posterior_of": points[posterior_point]}
    return metrics, panels


def run(settings: dict, *, samples: int, points_per_mode: int = POINTS_PER_MODE, posterior_point: int = 0,
        posterior_draws: int = 2000, device: torch.device = torch.device("cpu")) -> tuple[dict, dict]:
    """Train one model (``settings``: a validated run of dataset ``mog25``) on the mixture and evaluate it."""
    points, labels = mixture_points(points_per_mode)
    protocol = EvaluationProtocol(batch_size=1000, langevin_steps=0, train_images=points)
    model, cost = train_in_memory(settings, StageContext(points, device), protocol)
    metrics, panels = evaluate(model, points, samples=samples, seed=settings["seed"], posterior_point=posterior_point,
                               posterior_draws=posterior_draws)
    return ({**metrics, **cost, "seed": settings["seed"], "method": settings["method"], "points": len(points),
             "device": str(device)}, {**panels, "labels": labels})
