"""Networks: the top-down generators g(z) of the paper's Table 7 (supplementary Table 1), the
encoders that mirror them (for the encoder-based baselines), the latent hierarchy that SRI (L = 5)
puts on top of a Table 7 generator, LEBM's energy-based prior, and the fully connected encoder and
decoder of the Coupled VAE's mixture-of-Gaussians experiment.

The model is I = g(z) + eps, eps ~ N(0, sigma^2 I), z ~ N(0, I_d) (Sec. 3, Eq. 1).
Images live on the [-1, 1] scale (Tanh output).
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

#: Image shape (channels, height, width) and the paper's latent size per architecture.
ARCHITECTURES = {
    "mnist": {"image_shape": (1, 28, 28), "latent_dim": 30},
    "svhn": {"image_shape": (3, 32, 32), "latent_dim": 64},
    "celeba": {"image_shape": (3, 64, 64), "latent_dim": 64},
    "mnist64": {"image_shape": (1, 64, 64), "latent_dim": 10},  # AE-OT's MNIST at 64x64 (not in Table 7)
    "celeba128": {"image_shape": (3, 128, 128), "latent_dim": 100},  # AE-OT's CelebA at 128x128 (not in Table 7)
    "mog": {"image_shape": (2,), "latent_dim": 2},  # the Coupled VAE's 2-D mixture of 25 Gaussians (Sec. 5)
}


#: The architecture (Table 7 column) of each dataset.
ARCHITECTURE_OF_DATASET = {"mnist": "mnist", "mnist5k": "mnist", "svhn": "svhn", "celeba": "celeba",
                           "mnist64": "mnist64", "mnist5k64": "mnist64", "celeba128": "celeba128",
                           "mog25": "mog"}


def architecture_of(dataset: str) -> str:
    return ARCHITECTURE_OF_DATASET[dataset]


def _up(in_ch: int, out_ch: int) -> list[nn.Module]:
    """5x5 stride-2 transposed convolution doubling the resolution, BN, ReLU."""
    return [
        nn.ConvTranspose2d(in_ch, out_ch, 5, stride=2, padding=2, output_padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    ]


class MnistGenerator(nn.Module):
    """Table 7, MNIST: Linear 1024 -> Linear 7*7*128 -> ConvT 2x2/2 64 -> ConvT 2x2/2 C, Tanh."""

    def __init__(self, latent_dim: int = 30, channels: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 1024),
            nn.BatchNorm1d(1024),
            nn.ReLU(),
            nn.Linear(1024, 7 * 7 * 128),
            nn.BatchNorm1d(7 * 7 * 128),
            nn.ReLU(),
            nn.Unflatten(1, (128, 7, 7)),
            nn.ConvTranspose2d(128, 64, 2, stride=2),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.ConvTranspose2d(64, channels, 2, stride=2),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class DcganGenerator(nn.Module):
    """Table 7, SVHN (base 64, 32x32) and CelebA (base 128, 64x64): z as a 1x1 map, a ConvT to a
    ``start`` x ``start`` map of base * 2^(doublings - 1) channels, then 5x5 stride-2 ConvTs halving the
    channels, Tanh.

    Table 7 lists no batch norm or activation after the first ConvT. Taken literally, that layer and
    the next ConvT would compose two linear maps; every DCGAN-style generator (Radford et al. 2016,
    the short-run inference and LEBM code) puts BN + ReLU there, and so does this one (docs/datasets.md).
    """

    def __init__(self, latent_dim: int, base: int, start: int, doublings: int, channels: int = 3):
        super().__init__()
        width = base * 2 ** (doublings - 1)
        layers: list[nn.Module] = [nn.Unflatten(1, (latent_dim, 1, 1)), nn.ConvTranspose2d(latent_dim, width, start),
                                   nn.BatchNorm2d(width), nn.ReLU()]
        for _ in range(doublings - 1):
            layers += _up(width, width // 2)
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 5, stride=2, padding=2, output_padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class FullyConnected(nn.Module):
    """The Coupled VAE's networks for 2-D data (Hao & Shafto, Sec. 5, "Mixture of Gaussians"): four fully
    connected layers, ``width`` units, batch norm and ReLU between them, a linear output."""

    def __init__(self, inputs: int, outputs: int, width: int = 256, layers: int = 4):
        super().__init__()
        sizes = [inputs] + [width] * (layers - 1)
        hidden = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU())]
        self.net = nn.Sequential(*hidden, nn.Linear(sizes[-1], outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HierarchicalGenerator(nn.Module):
    """Latent layers stacked top-down on a Table 7 generator (SRI with L latent layers, Nijkamp et al. 2020).

    The latent vector is the concatenation (top layer first) of standard-normal layers
    e_1, ..., e_L, so that its prior is N(0, I) as in Eq. (1) and the same Langevin dynamics (Eq. 6)
    infer all layers jointly. Top-down: h_1 = GELU(W_1 e_1); each lower layer l is a Gaussian given
    the layers above, z_l = mu_l(h_{l-1}) + softplus(rho_l(h_{l-1})) * e_l (their code's
    reparameterised ``Stochastic`` layer), and enters the network at its own depth,
    h_l = h_{l-1} + GELU(W_l [h_{l-1}, z_l]) (a residual block, like their skip connections).
    The bottom layer z_L (``latent_dim``, the paper's d) is the input of the Table 7 generator.
    """

    def __init__(self, bottom: nn.Module, upper_latent_dims: list[int], latent_dim: int, width: int = 256):
        super().__init__()
        self.dims = [*upper_latent_dims, latent_dim]
        self.top = nn.Sequential(nn.Linear(self.dims[0], width), nn.GELU())
        self.means = nn.ModuleList(nn.Linear(width, d) for d in self.dims[1:])
        self.scales = nn.ModuleList(nn.Linear(width, d) for d in self.dims[1:])
        self.mixers = nn.ModuleList(nn.Sequential(nn.Linear(width + d, width), nn.GELU()) for d in self.dims[1:-1])
        self.bottom = bottom

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        layers = e.split(self.dims, dim=1)
        h = self.top(layers[0])
        for level, e_l in enumerate(layers[1:]):
            z_l = self.means[level](h) + nn.functional.softplus(self.scales[level](h)) * e_l
            if level == len(self.mixers):  # the bottom layer: the Table 7 generator's input
                return self.bottom(z_l)
            h = h + self.mixers[level](torch.cat([h, z_l], dim=1))


class EnergyPrior(nn.Module):
    """f_alpha of LEBM (Pang et al. 2020): an MLP d -> width -> width -> 1 with GELU (their code),
    the prior p_alpha(z) proportional to exp(f_alpha(z)) N(z; 0, I). PyTorch's default initialisation."""

    def __init__(self, latent_dim: int, width: int = 200):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                                 nn.Linear(width, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """f_alpha(z) per example, shape (n,)."""
        return self.net(z).squeeze(1)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p_alpha(z) up to log Z_alpha: f_alpha(z) - ||z||^2 / 2."""
        return self(z) - z.pow(2).sum(1) / 2


def build_generator(architecture: str, latent_dim: int, upper_latent_dims: list[int] = ()) -> nn.Module:
    """The Table 7 generator for ``architecture`` with Xavier-normal initialisation (supp. Sec. C); with
    ``upper_latent_dims`` (top first), those latent layers above it (:class:`HierarchicalGenerator`)."""
    if upper_latent_dims:
        hierarchy = HierarchicalGenerator(build_generator(architecture, latent_dim), list(upper_latent_dims), latent_dim)
        for part in (hierarchy.top, hierarchy.means, hierarchy.scales, hierarchy.mixers):
            _xavier_normal(part)
        return hierarchy
    if architecture == "mnist":
        model = MnistGenerator(latent_dim, channels=ARCHITECTURES["mnist"]["image_shape"][0])
    elif architecture == "svhn":  # 1x1 -> 2x2x512 -> 4, 8, 16, 32
        model = DcganGenerator(latent_dim, base=64, start=2, doublings=4)
    elif architecture == "celeba":  # 1x1 -> 4x4x1024 -> 8, 16, 32, 64
        model = DcganGenerator(latent_dim, base=128, start=4, doublings=4)
    elif architecture == "mnist64":  # the CelebA network at a quarter of its widths, one channel: 4x4x256 -> ... 64
        model = DcganGenerator(latent_dim, base=32, start=4, doublings=4, channels=1)
    elif architecture == "celeba128":  # the CelebA network with one more doubling: 4x4x1024 -> 8, ..., 64, 128
        model = DcganGenerator(latent_dim, base=64, start=4, doublings=5)
    elif architecture == "mog":
        model = FullyConnected(latent_dim, ARCHITECTURES["mog"]["image_shape"][0])
    else:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}")
    return _xavier_normal(model)


class MnistEncoder(nn.Module):
    """The MNIST generator mirrored: Conv 2x2/2 64 -> Conv 2x2/2 128 -> Linear 1024 -> Linear ``outputs``.

    Batch norm and ReLU after every layer but the last, as in the generator.
    """

    def __init__(self, outputs: int, channels: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 64, 2, stride=2),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 128, 2, stride=2),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(7 * 7 * 128, 1024),
            nn.BatchNorm1d(1024),
            nn.ReLU(),
            nn.Linear(1024, outputs),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class DcganEncoder(nn.Module):
    """A DCGAN generator mirrored: 5x5 stride-2 convolutions (BN + ReLU after all but the first),
    then a convolution over the last ``start`` x ``start`` map to ``outputs`` channels."""

    def __init__(self, outputs: int, base: int, start: int, doublings: int, channels: int = 3):
        super().__init__()
        width = base
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 5, stride=2, padding=2), nn.ReLU()]
        for _ in range(doublings - 1):
            layers += [nn.Conv2d(width, width * 2, 5, stride=2, padding=2), nn.BatchNorm2d(width * 2), nn.ReLU()]
            width *= 2
        layers += [nn.Conv2d(width, outputs, start), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def _xavier_normal(model: nn.Module) -> nn.Module:
    """Xavier-normal weights and zero biases for every linear and (transposed) convolution (supp. Sec. C)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def build_encoder(architecture: str, outputs: int) -> nn.Module:
    """The encoder that mirrors the Table 7 generator of ``architecture``, with ``outputs`` outputs."""
    if architecture == "mnist":
        model = MnistEncoder(outputs, channels=ARCHITECTURES["mnist"]["image_shape"][0])
    elif architecture == "svhn":
        model = DcganEncoder(outputs, base=64, start=2, doublings=4)
    elif architecture == "celeba":
        model = DcganEncoder(outputs, base=128, start=4, doublings=4)
    elif architecture == "mnist64":
        model = DcganEncoder(outputs, base=32, start=4, doublings=4, channels=1)
    elif architecture == "celeba128":
        model = DcganEncoder(outputs, base=64, start=4, doublings=5)
    elif architecture == "mog":
        model = FullyConnected(ARCHITECTURES["mog"]["image_shape"][0], outputs)
    else:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}")
    return _xavier_normal(model)


class frozen_batchnorm_statistics:
    """Context manager: batch-norm layers normalise with batch statistics but leave running stats unchanged.

    Inference (Langevin) sees the same function g as learning does, without the inference
    passes moving the running averages used later for sampling.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [(m.momentum, m.num_batches_tracked.clone()) for m in self.layers]
        for m in self.layers:
            m.momentum = 0.0
        return self

    def __exit__(self, *exc):
        for m, (momentum, tracked) in zip(self.layers, self.saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
        return False


def interleave(t: torch.Tensor, groups: int, dim: int = 0) -> torch.Tensor:
    """``groups`` equal batches one after another along ``dim`` interleaved: example b of batch g moves from
    position g B + b to b G + g, the layout of ``batch_norm_per_group``."""
    return t.unflatten(dim, (groups, -1)).transpose(dim, dim + 1).flatten(dim, dim + 1)


def deinterleave(t: torch.Tensor, groups: int, dim: int = 0) -> torch.Tensor:
    """The batches one after another again: the inverse of ``interleave``."""
    return interleave(t, t.shape[dim] // groups, dim)


@contextlib.contextmanager
def batch_norm_per_group(model: nn.Module, groups: int):
    """Context manager: every batch-norm layer of ``model`` that normalises with batch statistics takes its
    input as ``groups`` equal batches, interleaved (``interleave``: example b of batch g in row b G + g),
    and normalises each batch with its own statistics, as if it went through the layer alone; running
    statistics are left untouched.

    A sweep of Langevin inference can so run many batches through ``model`` at once, each batch seeing
    the function g it would see alone, in a few large matrix products (``langevin.short_run_inference``).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:  # an instance attribute shadows the class's forward
        layer.forward = functools.partial(_batch_norm_per_group, layer, groups)
    try:
        yield model
    finally:
        for layer in layers:
            del layer.forward


def _batch_norm_per_group(layer: nn.modules.batchnorm._BatchNorm, groups: int, x: torch.Tensor) -> torch.Tensor:
    """``layer`` applied to each of the ``groups`` interleaved batches of ``x`` alone, in one call: the view
    (B, G C, ...) of the interleaved rows gives every batch its own channels, so that one batch norm over
    G C channels takes each batch's statistics, from the same numbers summed in the same order as G separate
    calls, without copying x."""
    if not layer.training and layer.running_mean is not None:  # running statistics: example by example already
        return type(layer).forward(layer, x)
    weight, bias = (None if p is None else p.repeat(groups) for p in (layer.weight, layer.bias))
    out = nn.functional.batch_norm(x.unflatten(0, (-1, groups)).flatten(1, 2), None, None, weight, bias,
                                   training=True, eps=layer.eps)
    return out.reshape(x.shape)
