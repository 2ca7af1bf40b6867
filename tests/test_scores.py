"""The Inception Score formula on hand-built cases, and the digit classifier behind the offline score."""

import math

import numpy as np
import pytest
import torch

from shortrun_ot import data
from shortrun_ot.classifier import accuracy, class_probabilities, train_classifier
from shortrun_ot.metrics import inception_score


def test_uniform_predictions_score_one():
    assert inception_score(np.full((50, 10), 0.1)) == pytest.approx((1.0, 0.0))


@pytest.mark.parametrize("k", [2, 4, 10])
def test_confident_balanced_predictions_over_k_classes_score_k(k):
    labels = np.arange(10 * k) % k  # every split of k consecutive rows holds each class once
    assert inception_score(np.eye(k)[labels], splits=10) == pytest.approx((k, 0.0))


def test_confident_predictions_of_one_class_score_one():
    assert inception_score(np.eye(10)[np.zeros(30, int)])[0] == pytest.approx(1.0)


def test_score_matches_a_hand_computation():
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    marginal = [0.75, 0.25]
    kl = [0.5 * math.log(0.5 / marginal[0]) + 0.5 * math.log(0.5 / marginal[1]), math.log(1.0 / marginal[0])]
    assert inception_score(p, splits=1)[0] == pytest.approx(math.exp(sum(kl) / 2), rel=1e-12)


@pytest.mark.parametrize("bad", [np.full((5, 10), 0.1), np.full((20, 10), 0.2), np.full((20, 10), np.nan)])
def test_bad_probabilities_are_refused(bad):
    with pytest.raises(ValueError):
        inception_score(bad)


@pytest.mark.slow
def test_the_classifier_learns_the_embedded_digits():
    raw = data.load_raw("mnist5k", None)
    train = data.to_model_scale(raw["train_images"][:2000])
    test = data.to_model_scale(raw["test_images"])
    model = train_classifier(train, raw["train_labels"][:2000], epochs=4, batch_size=50, lr=2e-3, seed=0,
                             device="cpu")
    assert accuracy(model, test, raw["test_labels"], 250, "cpu") > 0.9
    probabilities = class_probabilities(model, test, 250, "cpu")
    # real test digits are confident and balanced: their score approaches 10
    assert inception_score(probabilities)[0] > 7


def test_inception_logits_come_from_pytorch_fid_weights_where_they_hold_them(tmp_path, monkeypatch):
    from shortrun_ot import inception
    from shortrun_ot.io import save_tensors

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / "converted.pth"))
    save_tensors({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, tmp_path / "converted.pth")  # no classifier
    assert inception.logit_layer() is None
    weight, bias = torch.randn(1008, 2048), torch.randn(1008)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    save_tensors({"fc.weight": weight, "fc.bias": bias}, tmp_path / "hub" / "checkpoints" / inception.WEIGHTS_NAME)
    layer = inception.logit_layer()
    features = torch.randn(3, 2048)
    assert torch.allclose(layer(features), features @ weight.T, atol=1e-4)  # no bias, as Salimans et al.'s code
