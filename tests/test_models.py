"""Generators of Table 7 and the batch-norm handling of the inference stage."""

import pytest
import torch
from torch import nn

from shortrun_ot.models import ARCHITECTURES, build_generator, frozen_batchnorm_statistics


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_output_shape_and_range(name):
    spec = ARCHITECTURES[name]
    g = build_generator(name, spec["latent_dim"])
    images = g(torch.randn(4, spec["latent_dim"]))
    assert images.shape == (4, *spec["image_shape"])
    if len(spec["image_shape"]) == 3:  # images: Tanh; the 2-D mixture's points are unbounded
        assert images.abs().max() <= 1


def test_the_mixture_networks_are_four_linear_layers_of_256_with_batch_norm_and_relu_between():
    """The Coupled VAE's Sec. 5: "four fully connected layers with ReLU activations with Batch normalizations in
    between. All hidden layers have 256 neurons"; a linear output (the points are not bounded)."""
    from shortrun_ot.models import build_encoder

    for network, sizes in ((build_generator("mog", 2), [(2, 256), (256, 256), (256, 256), (256, 2)]),
                           (build_encoder("mog", 4), [(2, 256), (256, 256), (256, 256), (256, 4)])):
        layers = list(network.net)
        assert [(m.in_features, m.out_features) for m in layers if isinstance(m, nn.Linear)] == sizes
        assert [type(m) for m in layers[:3]] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] and isinstance(layers[-1], nn.Linear)
        assert sum(isinstance(m, nn.BatchNorm1d) for m in layers) == 3


def test_mnist_generator_layers_follow_table7():
    g = build_generator("mnist", 30)
    linear = [m for m in g.modules() if isinstance(m, torch.nn.Linear)]
    convt = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_features, m.out_features) for m in linear] == [(30, 1024), (1024, 7 * 7 * 128)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in convt] == [
        (128, 64, (2, 2), (2, 2)), (64, 1, (2, 2), (2, 2))]


#: Table 7 (supplementary Table 1), read row by row: (output channels, output size, kernel, stride, padding,
#: output_padding, batch norm, activation) of each transposed convolution. The first row's BN + ReLU is
#: this project's reading (the table lists none there; see DcganGenerator).
TABLE7_CONVT = {
    "svhn": [(512, 2, 2, 1, 0, 0, True, nn.ReLU), (256, 4, 5, 2, 2, 1, True, nn.ReLU),
             (128, 8, 5, 2, 2, 1, True, nn.ReLU), (64, 16, 5, 2, 2, 1, True, nn.ReLU),
             (3, 32, 5, 2, 2, 1, False, nn.Tanh)],
    "celeba": [(1024, 4, 4, 1, 0, 0, True, nn.ReLU), (512, 8, 5, 2, 2, 1, True, nn.ReLU),
               (256, 16, 5, 2, 2, 1, True, nn.ReLU), (128, 32, 5, 2, 2, 1, True, nn.ReLU),
               (3, 64, 5, 2, 2, 1, False, nn.Tanh)],
}


@pytest.mark.parametrize("name", sorted(TABLE7_CONVT))
def test_dcgan_generators_follow_table7_layer_by_layer(name):
    d = 64
    g = build_generator(name, d)
    modules = [m for m in g.modules() if not isinstance(m, (nn.Sequential, type(g), nn.Unflatten))]
    convts = [i for i, m in enumerate(modules) if isinstance(m, nn.ConvTranspose2d)]
    shapes = []
    hooks = [modules[i].register_forward_hook(lambda m, x, y: shapes.append(tuple(y.shape[1:]))) for i in convts]
    g(torch.randn(2, d))
    for h in hooks:
        h.remove()
    expected_params = 0
    in_channels = d
    assert len(convts) == len(TABLE7_CONVT[name])
    for i, shape, row in zip(convts, shapes, TABLE7_CONVT[name]):
        out, size, kernel, stride, padding, output_padding, bn, activation = row
        layer = modules[i]
        assert shape == (out, size, size)
        assert (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                layer.output_padding) == (in_channels, out, (kernel, kernel), (stride, stride), (padding, padding),
                                          (output_padding, output_padding))
        following = modules[i + 1: i + 3]
        if bn:
            assert isinstance(following[0], nn.BatchNorm2d) and following[0].num_features == out
            assert isinstance(following[1], activation)
        else:
            assert isinstance(following[0], activation)
        expected_params += in_channels * out * kernel * kernel + out + (2 * out if bn else 0)
        in_channels = out
    assert sum(p.numel() for p in g.parameters()) == expected_params
    # by hand: SVHN 64*512*4 + 512*256*25 + 256*128*25 + 128*64*25 + 64*3*25 weights, 963 biases, 1,920 BN
    # parameters; CelebA 64*1024*16 + 1024*512*25 + 512*256*25 + 256*128*25 + 128*3*25, 1,923 and 3,840
    assert expected_params == {"svhn": 4_439_555, "celeba": 18_267_139}[name]


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
