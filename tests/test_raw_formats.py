"""Raw SVHN (.mat) and CelebA (aligned JPEGs + partition file) in their official formats, on tiny files written
here; no network (every torchvision download is replaced by one that fails or is forbidden)."""

import contextlib
import io
import zipfile

import numpy as np
import pytest
import scipy.io
import torch
import torchvision
from PIL import Image

from shortrun_ot import cli, data

# ---------------------------------------------------------------- SVHN

SVHN_LABELS = {"train": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 3], "test": [10, 1, 2, 5, 9]}


def svhn_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) as in SVHN's .mat files, with random pixels."""
    labels = SVHN_LABELS[split]
    x = np.random.default_rng(len(labels)).integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
    return x, np.array(labels, dtype=np.uint8).reshape(-1, 1)


def write_svhn(root, splits=("train", "test")) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        x, y = svhn_arrays(split)
        scipy.io.savemat(root / data.SVHN_FILES[split], {"X": x, "y": y})


def raw_data_problem(name, root):
    """None when the raw files of ``name`` are in ``root`` (presence only), else the "put these files here" message."""
    try:
        data.fetch_raw(name, root, download=False)
    except data.DatasetUnavailableError as exc:
        return str(exc)
    return None


@pytest.fixture
def no_download(monkeypatch):
    """Any torchvision download fails the test: these tests must not touch the network."""

    def forbidden(self):
        pytest.fail("a download was attempted")

    for dataset in (torchvision.datasets.MNIST, torchvision.datasets.SVHN, torchvision.datasets.CelebA):
        monkeypatch.setattr(dataset, "download", forbidden)


def test_svhn_images_labels_and_source(tmp_path, no_download):
    write_svhn(tmp_path)
    raw = data.load_raw("svhn", tmp_path, download=False)
    for split in data.SPLITS:
        x, y = svhn_arrays(split)
        images, labels = raw[f"{split}_images"], raw[f"{split}_labels"]
        assert images.dtype == torch.uint8 and images.shape == (len(y), 3, 32, 32) and images.is_contiguous()
        for n, c, row, col in [(0, 0, 0, 1), (1, 2, 5, 30), (len(y) - 1, 1, 31, 0), (2, 1, 17, 3)]:
            assert images[n, c, row, col] == x[row, col, c, n]
        assert torch.equal(images, torch.from_numpy(x).permute(3, 2, 0, 1))
        assert labels.dtype == torch.int64
        assert labels.tolist() == [label % 10 for label in SVHN_LABELS[split]]
    assert raw["train_labels"][9] == 0  # SVHN's label 10 is the digit 0
    assert set(raw["source"]) == {"train_32x32.mat", "test_32x32.mat"}


def test_svhn_prepare_and_read_back(tmp_path, no_download):
    write_svhn(tmp_path / "raw")
    out = tmp_path / "svhn.pt"
    manifest = data.prepare("svhn", tmp_path / "raw", out)
    assert manifest["counts"] == {"train": 12, "test": 5}
    assert manifest["image_shape"] == [3, 32, 32]
    x, _ = svhn_arrays("train")
    assert manifest["pixel_mean"]["train"] == pytest.approx(x.mean() / 255, abs=1e-6)
    assert manifest["pixel_std"]["train"] == pytest.approx(x.std(ddof=1) / 255, abs=1e-6)
    prepared = data.read_prepared(out)
    assert torch.equal(prepared["train_images"], torch.from_numpy(x).permute(3, 2, 0, 1))
    assert prepared["test_labels"].tolist() == [0, 1, 2, 5, 9]
    assert data.load_prepared(out, "test").shape == (5, 3, 32, 32)


def test_svhn_anomaly_split_holds_out_a_digit(tmp_path, no_download):
    write_svhn(tmp_path)
    manifest = data.prepare("svhn", tmp_path, tmp_path / "svhn-0.pt", heldout_digit=0)
    assert manifest["counts"]["test_anomalies"] == 3  # the three images labelled 10
    assert manifest["image_shape"] == [3, 32, 32]


@pytest.mark.parametrize("variables, problem", [
    ({"X": np.zeros((12, 3, 32, 32), np.uint8), "y": np.ones((12, 1), np.uint8)}, "not SVHN's uint8 32x32x3xN"),
    ({"X": np.zeros((32, 32, 3, 12)), "y": np.ones((12, 1), np.uint8)}, "not SVHN's uint8 32x32x3xN"),
    ({"X": np.zeros((32, 32, 3, 12), np.uint8), "y": np.ones((11, 1), np.uint8)}, "holds 12 images"),
    ({"X": np.zeros((32, 32, 3, 12), np.uint8), "y": np.zeros((12, 1), np.uint8)}, "outside SVHN's labels 1..10"),
    ({"images": np.zeros((32, 32, 3, 12), np.uint8)}, "lacks the SVHN variables"),
])
def test_svhn_wrong_layout_names_the_file(tmp_path, no_download, variables, problem):
    write_svhn(tmp_path)
    broken = tmp_path / "train_32x32.mat"
    scipy.io.savemat(broken, variables)
    with pytest.raises(ValueError, match=f"{broken}.*{problem}.*delete .* and download it again"):
        data.load_raw("svhn", tmp_path, download=False)


def test_svhn_unreadable_file_names_the_file(tmp_path, no_download):
    write_svhn(tmp_path)
    broken = tmp_path / "test_32x32.mat"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"{broken} cannot be read as a MATLAB .mat file"):
        data.load_raw("svhn", tmp_path, download=False)


def test_missing_svhn_names_both_files_and_the_directory(tmp_path, no_download):
    write_svhn(tmp_path, splits=("train",))
    problem = raw_data_problem("svhn", tmp_path)
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load_raw("svhn", tmp_path, download=False)
    assert str(error.value) == problem
    for text in ("train_32x32.mat", "test_32x32.mat", f"into {tmp_path}", data.SVHN_URL):
        assert text in problem
    write_svhn(tmp_path, splits=("test",))
    assert raw_data_problem("svhn", tmp_path) is None


def test_failed_svhn_download_leaves_nothing_behind(tmp_path, monkeypatch):
    def partial_download(self):
        (tmp_path / "new" / "svhn").mkdir(parents=True)
        (tmp_path / "new" / "svhn" / self.filename).write_bytes(b"half a file")
        raise RuntimeError("Error downloading train_32x32.mat\nmore detail")

    monkeypatch.setattr(torchvision.datasets.SVHN, "download", partial_download)
    root = tmp_path / "new" / "svhn"
    with pytest.raises(data.DatasetUnavailableError, match="download failed \\(Error downloading train_32x32.mat\\)"):
        data.load_raw("svhn", root)
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- CelebA

# nine images: 1-5 train, 6-7 valid, 8-9 test; each is black with its centre 140x140 box in its own flat colour
CELEBA_PARTITION = {f"{i:06d}.jpg": 0 if i <= 5 else 1 if i <= 7 else 2 for i in range(1, 10)}
COLOURS = [(r, g, b) for r in (60, 200) for g in (60, 200) for b in (60, 200)] + [(130, 130, 130)]
JPEG_TOLERANCE = 12  # measured worst case 3; a crop box off by 2 pixels is off by 57 or more


def celeba_jpeg(index: int, size=(178, 218)) -> bytes:
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    left, top = (width - 140) // 2, (height - 140) // 2
    pixels[top:top + 140, left:left + 140] = COLOURS[index - 1]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


def write_partition(directory, partition=CELEBA_PARTITION) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in partition.items()))


def write_celeba(directory, layout="folder") -> None:
    """The nine images as a folder img_align_celeba/ or as img_align_celeba.zip, with the partition file."""
    write_partition(directory)
    images = {name: celeba_jpeg(int(name[:6])) for name in CELEBA_PARTITION}
    if layout == "folder":
        (directory / "img_align_celeba").mkdir()
        for name, jpeg in images.items():
            (directory / "img_align_celeba" / name).write_bytes(jpeg)
    else:
        with zipfile.ZipFile(directory / "img_align_celeba.zip", "w") as archive:
            for name, jpeg in images.items():
                archive.writestr(f"img_align_celeba/{name}", jpeg)


def image_ids(images: torch.Tensor) -> list[int]:
    """Which test image (1..9) each 64x64 image is, checking that every pixel is near its box colour."""
    colours = torch.tensor(COLOURS)
    ids = []
    for image in images.int():
        index = int((image.float().mean((1, 2)) - colours).abs().sum(1).argmin())
        assert (image - colours[index].view(3, 1, 1)).abs().max() <= JPEG_TOLERANCE
        ids.append(index + 1)
    return ids


@pytest.fixture
def celeba_root(tmp_path):
    write_celeba(tmp_path / "celeba")
    return tmp_path / "celeba"


def test_celeba_splits_shapes_and_labels(celeba_root, no_download):
    raw = data.load_raw("celeba", celeba_root, download=False)
    assert raw["train_images"].shape == (5, 3, 64, 64) and raw["test_images"].shape == (2, 3, 64, 64)
    assert raw["train_images"].dtype == torch.uint8
    train_ids, test_ids = image_ids(raw["train_images"]), image_ids(raw["test_images"])
    assert sorted(train_ids) == [1, 2, 3, 4, 5]  # fewer than 60,000: all of the train partition
    assert sorted(test_ids) == [8, 9]  # no valid images (6, 7) anywhere
    drawn = torch.randperm(5, generator=torch.Generator().manual_seed(data.CELEBA_SPLIT_SEED)) + 1
    assert train_ids == drawn.tolist() != sorted(train_ids)  # in the drawn order, not the partition file's
    for split in data.SPLITS:
        labels = raw[f"{split}_labels"]
        assert labels.dtype == torch.int64 and labels.tolist() == [-1] * len(labels)
    assert set(raw["source"]) == {"list_eval_partition.txt", "img_align_celeba/ (selected images)"}
    again = data.load_raw("celeba", celeba_root, download=False)
    for key in ("train_images", "test_images"):
        assert torch.equal(raw[key], again[key])
    assert raw["source"] == again["source"]


@pytest.mark.parametrize("layout, where", [("zip", "."), ("folder", "celeba"), ("zip", "celeba")])
def test_celeba_layouts_give_identical_tensors(tmp_path, celeba_root, no_download, layout, where):
    other = tmp_path / "other"
    write_celeba(other / where, layout)
    assert raw_data_problem("celeba", other) is None
    expected = data.load_raw("celeba", celeba_root, download=False)
    raw = data.load_raw("celeba", other, download=False)
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(raw[key], expected[key]), key
    if layout == "zip":
        assert set(raw["source"]) == {"list_eval_partition.txt", "img_align_celeba.zip"}


def test_celeba_cap_draws_distinct_train_images_reproducibly(celeba_root, no_download):
    full = data.load_celeba(celeba_root, download=False)
    capped = data.load_celeba(celeba_root, download=False, train_images=3, test_images=1)
    ids = image_ids(capped["train_images"])
    assert len(set(ids)) == 3 and set(ids) <= {1, 2, 3, 4, 5}
    assert torch.equal(capped["train_images"], full["train_images"][:3])  # the first 3 of the same draw
    assert image_ids(capped["test_images"])[0] in (8, 9)
    assert torch.equal(capped["train_images"], data.load_celeba(celeba_root, download=False, train_images=3,
                                                                test_images=1)["train_images"])


def test_missing_celeba_names_the_files_and_the_directory(tmp_path, no_download):
    write_partition(tmp_path)  # the images are missing
    problem = raw_data_problem("celeba", tmp_path)
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load_raw("celeba", tmp_path, download=False)
    assert str(error.value) == problem
    for text in ("img_align_celeba/", "img_align_celeba.zip", "list_eval_partition.txt", f"into {tmp_path}",
                 data.CELEBA_URL, "Google Drive"):
        assert text in problem


def test_celeba_without_partition_file_is_missing(celeba_root, no_download):
    (celeba_root / "list_eval_partition.txt").unlink()
    assert "list_eval_partition.txt" in raw_data_problem("celeba", celeba_root)
    with pytest.raises(data.DatasetUnavailableError, match="list_eval_partition.txt"):
        data.load_raw("celeba", celeba_root, download=False)


def test_failed_celeba_download_leaves_nothing_behind(tmp_path, monkeypatch):
    def refused(self):
        (tmp_path / "new" / "celeba" / "celeba").mkdir(parents=True)
        (tmp_path / "new" / "celeba" / "celeba" / "img_align_celeba.zip").write_bytes(b"<html>quota exceeded")
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(torchvision.datasets.CelebA, "download", refused)
    with pytest.raises(data.DatasetUnavailableError, match="download failed \\(File not found or corrupted.\\).*"
                                                           "Google Drive"):
        data.load_raw("celeba", tmp_path / "new" / "celeba")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("layout", ["folder", "zip"])
def test_celeba_listed_image_missing_is_named(tmp_path, no_download, layout):
    write_celeba(tmp_path, layout)
    write_partition(tmp_path, {**CELEBA_PARTITION, "000010.jpg": 2})
    with pytest.raises(ValueError, match="000010.jpg, listed in list_eval_partition.txt, is missing"):
        data.load_celeba(tmp_path, download=False, test_images=3)


def test_celeba_bad_partition_line_is_named(celeba_root, no_download):
    (celeba_root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg train\n")
    with pytest.raises(ValueError, match="line 2 reads '000002.jpg train'.*delete it and download it again"):
        data.load_raw("celeba", celeba_root, download=False)


def test_celeba_wrong_image_size_is_rejected(celeba_root, no_download):
    (celeba_root / "img_align_celeba" / "000009.jpg").write_bytes(celeba_jpeg(9, size=(200, 200)))
    with pytest.raises(ValueError, match="000009.jpg is 200x200 pixels, not 178x218"):
        data.load_raw("celeba", celeba_root, download=False)


def test_celeba_prepare_and_no_anomaly_split(celeba_root, tmp_path, no_download):
    out = tmp_path / "celeba.pt"
    manifest = data.prepare("celeba", celeba_root, out)
    assert manifest["counts"] == {"train": 5, "test": 2} and manifest["image_shape"] == [3, 64, 64]
    assert data.load_prepared(out, "train").shape == (5, 3, 64, 64)
    assert data.load_prepared_labels(out, "test").tolist() == [-1, -1]
    with pytest.raises(ValueError, match="'celeba' has no digit labels"):
        data.prepare("celeba", celeba_root, tmp_path / "anomaly.pt", heldout_digit=3)
    assert not (tmp_path / "anomaly.pt").exists()


# ---------------------------------------------------------------- all datasets


def test_mnist_without_download_is_not_fetched(tmp_path, no_download):
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load_raw("mnist", tmp_path, download=False)
    assert str(error.value) == raw_data_problem("mnist", tmp_path)
    assert "train-images-idx3-ubyte" in str(error.value) and f"into {tmp_path}" in str(error.value)


def test_raw_data_problem_special_cases(tmp_path):
    assert raw_data_problem("mnist5k", None) is None
    with pytest.raises(ValueError, match="choose one of mnist, mnist5k, svhn, celeba"):
        raw_data_problem("cifar10", tmp_path)
    with pytest.raises(ValueError, match="needs a raw data directory"):
        raw_data_problem("svhn", None)


def test_fetch_raw_returns_the_files_and_downloads_only_when_allowed(tmp_path, celeba_root, no_download):
    write_svhn(tmp_path / "svhn")
    assert data.fetch_raw("svhn", tmp_path / "svhn", download=False) == {
        split: tmp_path / "svhn" / name for split, name in data.SVHN_FILES.items()}
    assert data.fetch_raw("celeba", celeba_root) == (celeba_root / "list_eval_partition.txt",
                                                      celeba_root / "img_align_celeba")
    assert data.fetch_raw("mnist5k", None) is None
    with pytest.raises(data.DatasetUnavailableError, match="SVHN is not in"):
        data.fetch_raw("svhn", tmp_path / "empty", download=False)
    with pytest.raises(pytest.fail.Exception, match="a download was attempted"):
        data.fetch_raw("svhn", tmp_path / "empty")


def test_prepare_command_without_download(tmp_path, no_download):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(["prepare", "--dataset", "svhn", "--raw-root", str(tmp_path / "svhn"), "--no-download",
                       "--out", str(tmp_path / "svhn.pt")])
    assert rc == 1 and f"SVHN is not in {tmp_path / 'svhn'}. Put the two files" in err.getvalue()
    write_svhn(tmp_path / "svhn")
    assert cli.main(["prepare", "--dataset", "svhn", "--raw-root", str(tmp_path / "svhn"), "--no-download",
                     "--out", str(tmp_path / "svhn.pt")]) == 0
    assert data.read_prepared(tmp_path / "svhn.pt")["train_images"].shape == (12, 3, 32, 32)


def test_celeba128_is_the_centre_128_box_without_resizing(celeba_root, no_download):
    """AE-OT's CelebA (Liu et al., Sec. 4.3): "cropped to 128x128", the same images and selection as celeba."""
    raw = data.load_raw("celeba128", celeba_root, download=False)
    small = data.load_raw("celeba", celeba_root, download=False)
    assert raw["train_images"].shape == (5, 3, 128, 128) and raw["test_images"].shape == (2, 3, 128, 128)
    assert image_ids(raw["train_images"]) == image_ids(small["train_images"])  # box colour everywhere: inside the box
    assert data.raw_source("celeba128") == "celeba" and data.fetch_raw("celeba128", celeba_root, download=False)
