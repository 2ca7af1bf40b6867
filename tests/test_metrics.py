import inspect

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.metrics import auc, precision_recall_curve

from shortrun_ot.metrics import (auprc, feature_statistics, frechet_distance, inception_features,
                                 latent_frechet_distance,
                                 load_statistics, reconstruction_mse, save_statistics)


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))


def test_fid_of_a_set_with_itself_is_zero(features):
    mu, sigma = feature_statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fid_grows_with_a_shift(features):
    mu, sigma = feature_statistics(features)
    direction = np.random.default_rng(1).normal(size=features.shape[1])
    fids = [frechet_distance(mu, sigma, *feature_statistics(features + t * direction)) for t in (0.5, 1, 2, 4)]
    assert all(a < b for a, b in zip(fids, fids[1:]))
    # A shift leaves the covariance alone: the distance is the squared length of the shift.
    np.testing.assert_allclose(fids, [(t * np.linalg.norm(direction)) ** 2 for t in (0.5, 1, 2, 4)], rtol=1e-6)


def test_fid_closed_form_for_diagonal_covariances():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # ||mu1 - mu2||^2 + sum (sqrt(var1) - sqrt(var2))^2 = (1 + 0 + 6.25) + (4 + 1 + 0) = 12.25
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert expected == pytest.approx(12.25)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)


def test_statistics_round_trip(tmp_path, features):
    mu, sigma = feature_statistics(features)
    path = save_statistics(tmp_path / "stats" / "real.npz", mu, sigma, len(features))
    mu2, sigma2, n = load_statistics(path)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    assert n == len(features)
    assert [p.name for p in path.parent.iterdir()] == ["real.npz"]  # no temporary file left behind


def test_statistics_of_another_precision_are_refused(tmp_path, features):
    mu, sigma = feature_statistics(features)
    path = save_statistics(tmp_path / "real.npz", mu, sigma, len(features), precision="bfloat16")
    assert load_statistics(path, "bfloat16")[2] == len(features)
    with pytest.raises(ValueError, match="computed in bfloat16, the samples' in float32"):
        load_statistics(path)
    legacy = tmp_path / "legacy.npz"  # written before the precision was recorded: float32
    np.savez(legacy, mu=mu, sigma=sigma, n=len(features))
    assert load_statistics(legacy)[2] == len(features)
    with pytest.raises(ValueError, match="computed in float32"):
        load_statistics(legacy, "bfloat16")


def test_feature_statistics_needs_two_samples():
    with pytest.raises(ValueError):
        feature_statistics(np.zeros((1, 4)))


class PoolStub(torch.nn.Module):
    """Stands in for pytorch-fid's InceptionV3: a list holding (N, 2048, 1, 1) features."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2048, 1)

    def forward(self, x):
        return [torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1)]


def test_inception_features_batches_grey_and_clamps():
    torch.manual_seed(0)
    model, grey = PoolStub(), torch.rand(7, 1, 8, 8)
    feats = inception_features(grey, model, batch_size=3)
    assert feats.shape == (7, 2048) and feats.dtype == np.float64
    np.testing.assert_allclose(feats, inception_features(grey.repeat(1, 3, 1, 1), model, batch_size=50),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(inception_features(grey * 3 - 1, model),
                                  inception_features((grey * 3 - 1).clamp(0, 1), model))
    with pytest.raises(ValueError):
        inception_features(torch.rand(2, 2, 8, 8), model)


def test_reconstruction_mse_is_on_the_unit_scale():
    torch.manual_seed(0)
    x, y = torch.rand(5, 3, 8, 8) * 2 - 1, torch.rand(5, 3, 8, 8) * 2 - 1
    plain = torch.mean((x - y) ** 2).item()
    assert reconstruction_mse(x, y) == pytest.approx(plain / 4, rel=1e-6)
    assert reconstruction_mse(x, x) == 0.0
    with pytest.raises(ValueError):
        reconstruction_mse(x, y[:4])


def test_auprc_hand_computed():
    # Scores 0.9, 0.8, 0.7, 0.1 with labels 1, 0, 1, 0 (1 = anomaly). Thresholding at each score:
    #   >= 0.9: TP 1, FP 0 -> recall 1/2, precision 1
    #   >= 0.8: TP 1, FP 1 -> recall 1/2, precision 1/2
    #   >= 0.7: TP 2, FP 1 -> recall 1,   precision 2/3   (full recall: the curve stops here)
    # plus sklearn's end point (recall 0, precision 1). Trapezoids over recall:
    #   0 -> 1/2 at precision 1: 1/2;  1/2 -> 1/2: 0;  1/2 -> 1 from 1/2 to 2/3: (1/2)(1/2 + 2/3)/2 = 7/24
    # Total 19/24 (average precision would give 5/6 instead).
    assert auprc([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(19 / 24)
    assert auprc([0.9, 0.8, 0.7, 0.1], [True, False, True, False]) == pytest.approx(19 / 24)


def test_auprc_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.2
    scores = rng.normal(size=200) + labels
    precision, recall, _ = precision_recall_curve(labels, scores)
    assert auprc(scores, labels) == pytest.approx(auc(recall, precision), rel=1e-12)
    assert auprc(scores, labels) > auprc(-scores, labels)


@pytest.mark.parametrize("scores, labels", [
    ([0.1, 0.2, 0.3], [0, 1]),       # lengths differ
    ([0.1, 0.2, 0.3], [0, 0, 0]),    # no anomaly
    ([0.1, 0.2, 0.3], [1, 1, 1]),    # no normal sample
    ([0.1, 0.2, 0.3], [0, 2, 1]),    # not binary
    ([0.1, np.nan, 0.3], [0, 1, 1]),  # not finite
])
def test_auprc_rejects_bad_input(scores, labels):
    with pytest.raises(ValueError):
        auprc(scores, labels)


@pytest.mark.skipif("disp" not in inspect.signature(scipy.linalg.sqrtm).parameters,
                    reason="this SciPy has no sqrtm(disp=...), which pytorch-fid 0.3.0 passes")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_equals_pytorch_fids_on_the_same_statistics(seed):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(200, 6)), rng.normal(loc=0.3, size=(200, 6)) @ rng.normal(size=(6, 6))
    mu1, sigma1 = feature_statistics(a)
    mu2, sigma2 = feature_statistics(b)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(
        float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2)), rel=1e-12)


def test_frechet_distance_retries_a_rootless_product_with_pytorch_fids_offset():
    """sqrtm of the nilpotent [[0, 1], [0, 0]] is not finite; with 1e-6 on the diagonals its root has trace
    2e-3, so the distance is 0 + tr(A) + tr(I) - 2 * 2e-3 = 0 + 0 + 2 - 0.004 (pytorch-fid's value too)."""
    nilpotent = np.array([[0.0, 1.0], [0.0, 0.0]])
    assert frechet_distance(np.zeros(2), nilpotent, np.zeros(2), np.eye(2)) == pytest.approx(2 - 4e-3, rel=1e-6)
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_latent_frechet_distance_of_prior_samples_is_near_its_sampling_floor():
    n, d = 20000, 10
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    floor = d * (d + 1) / (4 * n) + d / n  # expected value for n samples (see the docstring)
    assert 0 < latent_frechet_distance(z) < 3 * floor


@pytest.mark.parametrize("shift, scale", [(2.0, 1.0), (0.0, 3.0), (1.0, 0.5)])
def test_latent_frechet_distance_of_a_shifted_scaled_gaussian_is_the_closed_form(shift, scale):
    """N(m 1, c^2 I) against N(0, I): ||m 1||^2 + d (c - 1)^2."""
    n, d = 50000, 8
    z = shift + scale * torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = d * shift**2 + d * (scale - 1) ** 2
    assert latent_frechet_distance(z) == pytest.approx(expected, abs=0.05 * scale**2 + 0.01 * expected)
