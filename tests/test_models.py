"""Generators of Table 7 and the batch-norm handling of the inference stage."""

import pytest
import torch

from shortrun_ot.models import ARCHITECTURES, build_generator, frozen_batchnorm_statistics


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_output_shape_and_range(name):
    spec = ARCHITECTURES[name]
    g = build_generator(name, spec["latent_dim"])
    images = g(torch.randn(4, spec["latent_dim"]))
    assert images.shape == (4, *spec["image_shape"])
    assert images.abs().max() <= 1  # Tanh


def test_mnist_generator_layers_follow_table7():
    g = build_generator("mnist", 30)
    linear = [m for m in g.modules() if isinstance(m, torch.nn.Linear)]
    convt = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_features, m.out_features) for m in linear] == [(30, 1024), (1024, 7 * 7 * 128)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in convt] == [
        (128, 64, (2, 2), (2, 2)), (64, 1, (2, 2), (2, 2))]


def test_xavier_normal_initialisation():
    torch.manual_seed(0)
    layer = build_generator("mnist", 30).net[3]  # Linear 1024 -> 6272
    expected_std = (2 / (1024 + 6272)) ** 0.5
    assert layer.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    assert torch.count_nonzero(layer.bias) == 0


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture 'cifar'"):
        build_generator("cifar", 10)


def test_frozen_batchnorm_uses_batch_statistics_but_keeps_running_averages():
    g = build_generator("mnist", 30).train()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    z = torch.randn(16, 30) * 3
    with frozen_batchnorm_statistics(g):
        inside = g(z)
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    torch.testing.assert_close(inside, g(z))  # same function as a train-mode forward
    assert not torch.equal(before["net.1.running_mean"], g.state_dict()["net.1.running_mean"])
