"""Evaluation metrics: FID (as pytorch-fid computes it), reconstruction MSE, anomaly AUPRC, Inception Score, and
the Gaussian-kernel MMD between two samples."""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from sklearn.metrics import auc, precision_recall_curve
from tqdm import tqdm

from .io import atomic_write


def inception_features(images: torch.Tensor, model: torch.nn.Module, batch_size: int = 50,
                       device: str | torch.device | None = None, progress: bool = False) -> np.ndarray:
    """Pool3 features (N, 2048), float64, of images (N, C, H, W) on the [0, 1] scale, C in {1, 3}.

    ``model`` is pytorch-fid's ``InceptionV3`` (see :func:`shortrun_ot.inception.load_fid_inception`),
    which resizes to 299x299 and maps [0, 1] to [-1, 1] itself. Grey images are repeated to three
    channels; values are clamped to [0, 1], as they would be in saved image files.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if device is None:
        device = next(model.parameters()).device
    features = []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="Inception"):
            batch = images[start:start + batch_size].to(device, torch.float32).clamp(0, 1)
            batch = batch.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
            features.append(model(batch)[0].flatten(1).cpu().double())
    return torch.cat(features).numpy()


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features (N, D), as pytorch-fid's ``calculate_activation_statistics``."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"expected features of shape (N >= 2, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, n: int,
                    precision: str = "float32") -> Path:
    """Write ``mu``, ``sigma`` (pytorch-fid's npz keys), the sample count ``n`` and the Inception pass's
    ``precision`` atomically."""
    return atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma, n=n, precision=precision))


def load_statistics(path: str | os.PathLike, precision: str = "float32") -> tuple[np.ndarray, np.ndarray, int]:
    """Read ``(mu, sigma, n)`` written by :func:`save_statistics`; a ValueError if they were computed in
    another precision than ``precision`` (files without the key are float32): an FID compares like with like."""
    with np.load(path) as data:
        stored = str(data["precision"]) if "precision" in data else "float32"
        if stored != precision:
            raise ValueError(f"{path}: reference statistics computed in {stored}, the samples' in {precision}; "
                             f"rebuild the reference with the same evaluation.fid_precision")
        return data["mu"], data["sigma"], int(data["n"])


#: pytorch-fid's offset for a singular product of covariances
SQRTM_OFFSET = 1e-6


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982),
    ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), computed as pytorch-fid's
    ``calculate_frechet_distance`` computes it (tested equal): ``scipy.linalg.sqrtm`` of the product, retried
    with 1e-6 added to both diagonals where it is not finite; an imaginary part above 1e-3 on its diagonal is
    an error, a smaller one is dropped. Written out because pytorch-fid 0.3.0 calls ``sqrtm(..., disp=False)``,
    which SciPy 1.18 removed."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"the two Gaussians differ in dimension: means {mu1.shape} and {mu2.shape}, covariances "
                         f"{sigma1.shape} and {sigma2.shape}")
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = np.eye(len(sigma1)) * SQRTM_OFFSET
        root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"the square root of the covariance product has an imaginary component "
                             f"{np.abs(root.imag).max():.3g}")
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def latent_frechet_distance(latents: torch.Tensor) -> float:
    """Frechet distance between the Gaussian fit N(mu, S) of a latent population and the prior N(0, I).

    ||mu||^2 + tr(S + I - 2 S^(1/2)) (Dowson & Landau 1982), with S the sample covariance; zero
    exactly when the first two moments match the prior's. A cheap distance to the prior for every
    iteration; unlike the OT cost to a prior sample of the same size, its sampling floor is small
    (about d (d + 1) / (4 n) + d / n for n prior samples in d dimensions).
    """
    z = torch.as_tensor(latents, dtype=torch.float64)
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"expected latents of shape (n >= 2, d), got {tuple(z.shape)}")
    mean = z.mean(0)
    eigenvalues = torch.linalg.eigvalsh(torch.cov(z.T).reshape(z.shape[1], z.shape[1])).clamp(min=0)
    return float(mean.square().sum() + (eigenvalues + 1 - 2 * eigenvalues.sqrt()).sum())


def gaussian_kernel_mmd(x: torch.Tensor, y: torch.Tensor, bandwidths) -> torch.Tensor:
    """The unbiased estimate of MMD^2 between samples ``x`` (n, d) and ``y`` (m, d) (Gretton et al. 2012,
    Eq. 3) with the kernel k(a, b) = sum over h in ``bandwidths`` of exp(-||a - b||^2 / (2 h^2)).

    Within-sample means run over the n (n - 1) and m (m - 1) distinct pairs, the cross term over all n m
    pairs: mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j). Differentiable
    (InfoVAE's penalty); a 0-dim tensor. ``bandwidths``: a positive number or a non-empty sequence of them.
    """
    bandwidths = [bandwidths] if isinstance(bandwidths, numbers.Real) else list(bandwidths)
    if not bandwidths or not all(float(h) > 0 for h in bandwidths):
        raise ValueError(f"the Gaussian-kernel MMD needs one or more positive bandwidths, got {bandwidths}")
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected samples of shapes (n, d) and (m, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = len(x), len(y)
    if min(n, m) < 2:
        raise ValueError(f"the unbiased MMD needs at least two points in each sample, got {n} and {m} (a last "
                         "minibatch of one image: choose a batch_size that does not leave one)")

    def squared_distances(a, b):  # ||a_i||^2 + ||b_j||^2 - 2 a_i.b_j, clamped at 0 against rounding
        return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp_min(0)

    within_x, within_y, across = squared_distances(x, x), squared_distances(y, y), squared_distances(x, y)
    total = x.new_zeros(())
    for h in bandwidths:
        kx, ky, kxy = (torch.exp(-distances / (2 * float(h) ** 2)) for distances in (within_x, within_y, across))
        total = total + ((kx.sum() - kx.diagonal().sum()) / (n * (n - 1))
                         + (ky.sum() - ky.diagonal().sum()) / (m * (m - 1))
                         - 2 * kxy.mean())
    return total


def reconstruction_mse(images: torch.Tensor, reconstructions: torch.Tensor, pixels: torch.Tensor | None = None) -> float:
    """Per-pixel mean squared error on the [0, 1] scale of images given on the model's [-1, 1] scale; with
    ``pixels`` (a 0/1 mask broadcast over the images, e.g. the missing pixels of occluded images), the mean
    over the selected pixels only."""
    images, reconstructions = torch.as_tensor(images), torch.as_tensor(reconstructions)
    if images.shape != reconstructions.shape:
        raise ValueError(f"shape mismatch: {tuple(images.shape)} vs {tuple(reconstructions.shape)}")
    x, y = (images.double() + 1) / 2, (reconstructions.double() + 1) / 2
    if pixels is None:
        return float(((x - y) ** 2).mean())
    selected = torch.as_tensor(pixels).double().expand_as(x)
    if not selected.sum() > 0:
        raise ValueError("the pixel mask selects no pixel")
    return float(((x - y) ** 2 * selected).sum() / selected.sum())


def auprc(scores, is_anomaly) -> float:
    """Area under the precision-recall curve, anomalies as the positive class.

    ``auc(recall, precision)`` over sklearn's ``precision_recall_curve`` (trapezoidal), as in the
    code of Zenati et al. (2018) and Pang et al. (2020); higher scores mean more anomalous.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_anomaly = np.asarray(is_anomaly)
    if scores.ndim != 1 or scores.shape != is_anomaly.shape:
        raise ValueError(f"scores {scores.shape} and is_anomaly {is_anomaly.shape} must be 1-D of equal length")
    if not np.isin(is_anomaly, (0, 1)).all():
        raise ValueError("is_anomaly must be boolean or 0/1")
    if is_anomaly.all() or not is_anomaly.any():
        raise ValueError("is_anomaly must contain both anomalies and normal samples")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    precision, recall, _ = precision_recall_curve(is_anomaly.astype(int), scores)
    return float(auc(recall, precision))


def inception_score(probabilities, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y | x) || p(y))) with p(y) the mean of
    p(y | x) over the images of a split; the mean and standard deviation over ``splits`` equal splits
    (their code's protocol: 10 splits). ``probabilities``: (n, classes) rows of class probabilities,
    from the Inception network's 1008-way softmax for the paper's score, or from any classifier."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or len(p) < splits or not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"need at least {splits} finite rows of probabilities, got an array of shape {p.shape}")
    if not np.allclose(p.sum(1), 1, atol=1e-4):
        raise ValueError("each row of probabilities must sum to 1")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 log 0 = 0
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0).sum(1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
