"""Reliability (issue 6): kill anywhere and resume, determinism, divergence, bad input, integrity.

In-process tests drive the stage CLI (``shortrun_ot.cli.main``) on 30 synthetic MNIST-like
images; the ``slow`` tests run the real Snakemake on a 2-iteration, 100-image mnist5k run,
each in its own working directory (``-d``) so that the locks and incomplete-markers a
killed Snakemake leaves behind never touch the repository's ``.snakemake``.
"""

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from conftest import REPO
from shortrun_ot import cli
from shortrun_ot.config import deep_merge, stage_settings
from shortrun_ot.io import FAULT_ENV, atomic_write, manifest_path, save_json, save_tensors
from shortrun_ot.methods.base import StageRef
from shortrun_ot.pipeline import save_state
from shortrun_ot.langevin import short_run_inference
from test_data import make_mnist_like, write_mnist_files

PARAMS = (REPO / "params.yaml").read_text()  # one snapshot: others may edit params.yaml meanwhile
TINY = {  # settings of the in-process runs (30 images, 3 batches)
    "dataset": "mnist", "train_images": None, "batch_size": 10,
    "langevin": {"steps": 2, "step_size": 0.05}, "correction": {"every": 2}, "learning": {"passes": 1},
}


# ---------------------------------------------------------------- helpers


def tree(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``root`` (hidden temporary files included)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*")) if p.is_file()
    }


def cli_main(*argv) -> tuple[int, str]:
    """Run one command in-process; (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main([str(a) for a in argv])
    return rc, err.getvalue()


def run_settings(**overrides) -> dict:
    """A run's settings (the protocol, the short-run defaults, TINY, ``overrides``), not yet validated."""
    params = yaml.safe_load(PARAMS)
    merged = deep_merge(params["training"], params["methods"]["shortrun"])
    return stage_settings(deep_merge(merged, {"method": "shortrun", **deep_merge(TINY, overrides)}))


class TinyRun:
    """Paths and stage calls of one in-process run of the short-run method under ``root``."""

    def __init__(self, root: Path, data: Path, name: str = "tiny"):
        self.root, self.data, self.name = Path(root), Path(data), name
        self.config = self.root / "config.json"

    def it(self, t: int, name: str) -> Path:
        return self.root / f"it{t:04d}" / name

    def write_config(self, **overrides):
        return cli_main("write-config", "--run", self.name, "--settings", json.dumps(run_settings(**overrides)),
                        "--out", self.config)

    def stage(self, stage: str, t: int, config=None, **inputs):
        return cli_main("stage", "--run", self.name, "--stage", stage, "--iteration", t, "--config",
                        config or self.config, "--data", self.data, "--device", "cpu",
                        "--inputs", *[f"{role}={path}" for role, path in inputs.items()],
                        "--out", self.it(t, f"{stage}.pt"))

    def init(self):
        return self.stage("init", 0)

    def infer(self, t: int, latents=None, config=None, model=None):
        previous = self.it(0, "init.pt") if t == 1 else self.it(t - 1, "learn.pt")
        latents = latents or (self.it(0, "init.pt") if t == 1 else self.it(t - 1, "infer.pt"))
        return self.stage("infer", t, config, model=model or previous, latents=latents)

    def learn(self, t: int, latents=None, config=None, model=None):
        previous = self.it(0, "init.pt") if t == 1 else self.it(t - 1, "learn.pt")
        return self.stage("learn", t, config, model=model or previous, latents=latents or self.it(t, "infer.pt"))


@pytest.fixture
def no_download(monkeypatch):
    """torchvision's MNIST download fails as it does offline, without touching the network."""

    def fail(self):
        os.makedirs(self.raw_folder, exist_ok=True)  # as the real download does before it fails
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirrors, got: <urlopen error>")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fail)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> TinyRun:
    """Raw IDX files, a prepared dataset and iterations 0 and 1 of a tiny run (read-only for the tests)."""
    root = tmp_path_factory.mktemp("base")
    write_mnist_files(root / "raw", make_mnist_like())
    assert cli_main("prepare", "--dataset", "mnist", "--raw-root", root / "raw",
                    "--out", root / "prepared" / "mnist.pt")[0] == 0
    run = TinyRun(root / "runs" / "tiny", root / "prepared" / "mnist.pt")
    for step in (run.write_config, run.init, lambda: run.infer(1), lambda: run.learn(1)):
        rc, err = step()
        assert rc == 0, err
    return run


@pytest.fixture
def unchanged(base):
    """Asserts after the test that nothing under the base run (raw, prepared, iterations 0 and 1) changed."""
    before = tree(base.root.parents[1])
    yield
    assert tree(base.root.parents[1]) == before


def error_line(err: str) -> str:
    """The one error line (it may follow an unfinished progress bar on the same line)."""
    lines = [line[line.index("shortrun-ot: error:"):] for line in err.splitlines() if "shortrun-ot: error:" in line]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- atomic writes and the fault hook


def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "checkpoint.pt"
    save_tensors({"x": torch.arange(3)}, target)
    before = tree(tmp_path)

    def disk_full(f):
        f.write(b"half of it")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, disk_full)
    assert tree(tmp_path) == before


def test_stale_temporaries_of_the_same_destination_are_removed(tmp_path):
    stale, other = tmp_path / ".inferred.pt.ab12cd_9.tmp", tmp_path / ".inferred.pt.json.ab12cd_9.tmp"
    stale.write_bytes(b"killed")
    other.write_bytes(b"another destination's")
    save_json({"ok": 1}, tmp_path / "inferred.pt")
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize("point", ["partial", "before-rename", "after-rename"])
def test_fault_hook_kills_the_writer_at_the_chosen_point(tmp_path, point):
    target = tmp_path / "it0002" / "stats.json"
    save_json({"old": True}, target)
    code = f"from shortrun_ot.io import save_json; save_json({{'new': list(range(1000))}}, {str(target)!r})"
    env = {**os.environ, FAULT_ENV: f"it0002/stats.json:{point}"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert result.returncode == -signal.SIGKILL
    temporaries = list(target.parent.glob(".stats.json.*.tmp"))
    new = json.dumps({"new": list(range(1000))}, indent=2, sort_keys=True) + "\n"
    if point == "after-rename":
        assert target.read_text() == new and not temporaries
    else:  # the destination keeps its complete old content; the killed write is only a temporary file
        assert json.loads(target.read_text()) == {"old": True}
        assert [len(p.read_text()) for p in temporaries] == [len(new) // 2 if point == "partial" else len(new)]


# ---------------------------------------------------------------- integrity: checkpoint manifests


def test_state_files_carry_a_manifest_with_their_checksum(base):
    for name in ("learn.pt", "infer.pt"):
        state = base.it(1, name)
        manifest = json.loads(manifest_path(state).read_text())
        assert manifest["sha256"] == hashlib.sha256(state.read_bytes()).hexdigest()
        assert manifest["bytes"] == state.stat().st_size
        assert (manifest["file"], manifest["iteration"], manifest["stage"]) == (name, 1, name[:-3])
        assert (manifest["method"], manifest["architecture"], manifest["latent_dim"]) == ("shortrun", "mnist", 30)
    assert manifest_path(base.it(0, "init.pt")).is_file()


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"has \d+ bytes but its manifest .*learn\.pt\.json records \d+"),
    ("flip", r"does not match the SHA-256 in its manifest .*learn\.pt\.json"),
    ("no-manifest", r"has no manifest .*learn\.pt\.json"),
])
def test_damaged_state_file_is_rejected_and_nothing_changes(base, tmp_path, damage, message):
    checkpoint = tmp_path / "it0001" / "learn.pt"
    checkpoint.parent.mkdir()
    payload = bytearray(base.it(1, "learn.pt").read_bytes())
    if damage == "truncate":
        payload = payload[: len(payload) // 3]
    elif damage == "flip":
        payload[len(payload) // 2] ^= 0x01
    checkpoint.write_bytes(payload)
    if damage != "no-manifest":
        manifest_path(checkpoint).write_bytes(manifest_path(base.it(1, "learn.pt")).read_bytes())
    before = tree(tmp_path), tree(base.root)
    run = TinyRun(tmp_path, base.data)
    rc, err = run.infer(2, latents=base.it(1, "infer.pt"), config=base.config, model=checkpoint)
    line = error_line(err)
    assert rc == 1 and "iteration 2, stage infer: state file " in line
    assert re.search(message, line), line
    assert f"delete {checkpoint} and {checkpoint}.json and rerun the same Snakemake command" in line
    assert (tree(tmp_path), tree(base.root)) == before


# ---------------------------------------------------------------- bad input


def test_unknown_dataset_is_rejected(base, tmp_path, unchanged):
    out = tmp_path / "cifar10.pt"
    (tmp_path / "config.json").write_text("{}")  # an existing output that must survive
    rc, err = cli_main("prepare", "--dataset", "cifar10", "--raw-root", base.root.parents[1] / "raw", "--out", out)
    assert rc == 1 and "unknown dataset 'cifar10'; choose one of mnist, mnist5k" in error_line(err)
    rc, err = TinyRun(tmp_path, base.data, "bad").write_config(dataset="cifar10")
    assert rc == 1 and "config key 'runs.bad.dataset': 'cifar10' is not one of ['mnist', 'mnist5k', 'svhn'" in error_line(err)
    assert tree(tmp_path) == {"config.json": hashlib.sha256(b"{}").hexdigest()}


def test_missing_data_directory_without_network_names_the_files(tmp_path, no_download):
    raw = tmp_path / "raw" / "mnist"
    rc, err = cli_main("prepare", "--dataset", "mnist", "--raw-root", raw, "--out", tmp_path / "prepared" / "mnist.pt")
    line = error_line(err)
    assert rc == 1 and f"MNIST is not in {raw} and the download failed" in line
    assert "train-images-idx3-ubyte, train-labels-idx1-ubyte" in line and f"into {raw} and rerun" in line
    assert list(tmp_path.iterdir()) == []  # not even the directories the download attempt created


@pytest.mark.parametrize("damage", ["truncated", "corrupt-gzip"])
def test_damaged_idx_file_is_rejected_and_the_prepared_file_is_kept(base, tmp_path, damage):
    raw = tmp_path / "raw"
    suffix = ".gz" if damage == "corrupt-gzip" else ""
    write_mnist_files(raw, make_mnist_like(), suffix)
    broken = raw / f"train-images-idx3-ubyte{suffix}"
    payload = bytearray(broken.read_bytes())
    if damage == "truncated":
        payload = payload[:-100]
    else:
        payload[len(payload) // 2] ^= 0xFF
        payload = payload[:-8] + bytes(8)  # and a wrong CRC/size trailer
    broken.write_bytes(payload)
    out = tmp_path / "prepared" / "mnist.pt"  # an earlier, good prepared file at the output path
    out.parent.mkdir()
    for source in (base.data, manifest_path(base.data)):
        (out.parent / source.name).write_bytes(source.read_bytes())
    before = tree(tmp_path)
    rc, err = cli_main("prepare", "--dataset", "mnist", "--raw-root", raw, "--out", out)
    line = error_line(err)
    assert rc == 1 and str(broken) in line and f"delete {broken} and download it again" in line
    assert tree(tmp_path) == before


def test_tampered_prepared_data_stops_a_stage(base, tmp_path):
    data = tmp_path / "mnist.pt"
    payload = bytearray(base.data.read_bytes())
    payload[-200] ^= 0x01
    data.write_bytes(payload)
    manifest_path(data).write_bytes(manifest_path(base.data).read_bytes())
    before = tree(tmp_path), tree(base.root)
    rc, err = TinyRun(tmp_path / "run", data).infer(2, latents=base.it(1, "infer.pt"), config=base.config,
                                                    model=base.it(1, "learn.pt"))
    line = error_line(err)
    assert rc == 1 and f"prepared data file {data} does not match the checksum in {data}.json" in line
    assert "rerun the prepare step" in line
    assert (tree(tmp_path), tree(base.root)) == before


def test_state_of_another_architecture_is_rejected(base, tmp_path, unchanged):
    run = TinyRun(tmp_path, base.data)
    assert run.write_config(latent_dim=8)[0] == 0
    before = tree(tmp_path)
    rc, err = run.infer(2, latents=base.it(1, "infer.pt"), model=base.it(1, "learn.pt"))
    line = error_line(err)
    expected = f"state file {base.it(1, 'learn.pt')} holds method/architecture/latent_dim ('shortrun', 'mnist', 30)"
    assert rc == 1 and expected in line
    assert "asks for ('shortrun', 'mnist', 8)" in line and "fix 'method'/'dataset'/'latent_dim'" in line
    assert tree(tmp_path) == before


def test_latents_of_another_length_are_rejected(base, tmp_path, unchanged):
    run = TinyRun(tmp_path, base.data)
    assert run.write_config(train_images=20)[0] == 0
    before = tree(tmp_path)
    for stage, t in ((run.infer, 2), (run.learn, 1)):
        rc, err = stage(t, latents=base.it(1, "infer.pt"), model=base.it(t - 1, "learn.pt" if t > 1 else "init.pt"))
        line = error_line(err)
        assert rc == 1 and f"latents file {base.it(1, 'infer.pt')} holds 30 latents but the dataset has 20" in line
        assert "delete" in line and "fix the configuration" in line
    assert tree(tmp_path) == before


def test_non_finite_latents_are_rejected_by_learning(base, tmp_path, unchanged):
    latents = torch.load(base.it(1, "infer.pt"))["latents"].clone()
    latents[3, 1] = float("nan")
    bad = tmp_path / "infer.pt"
    save_state({"latents": latents}, bad, json.loads(base.config.read_text()), StageRef(1, "infer"))
    before = tree(tmp_path)
    rc, err = TinyRun(tmp_path, base.data).learn(1, latents=bad, config=base.config, model=base.it(0, "init.pt"))
    assert rc == 1 and f"latents file {bad} holds non-finite values" in error_line(err)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("key, value, message", [
    ("langevin", {"step_size": -1.0}, "'runs.bad.langevin.step_size': -1.0 is less than or equal to the minimum of 0"),
    ("correction", {"alpha": 1.5}, "'runs.bad.correction.alpha': 1.5 is greater than the maximum of 1"),
    ("batch_size", 0, "'runs.bad.batch_size': 0 is less than the minimum of 1"),
])
def test_parameter_out_of_range_is_rejected(base, tmp_path, unchanged, key, value, message):
    run = TinyRun(tmp_path, base.data, "bad")
    assert run.write_config()[0] == 0
    before = tree(tmp_path)
    rc, err = run.write_config(**{key: value})
    assert rc == 1 and f"config key {message}" in error_line(err)
    assert tree(tmp_path) == before


def test_hand_edited_run_config_out_of_range_is_rejected_by_the_stage(base, tmp_path, unchanged):
    settings = json.loads(base.config.read_text())
    settings["langevin"]["steps"] = 0
    config = tmp_path / "config.json"
    config.write_text(json.dumps(settings))
    before = tree(tmp_path)
    rc, err = TinyRun(tmp_path, base.data).infer(2, latents=base.it(1, "infer.pt"), config=config,
                                                 model=base.it(1, "learn.pt"))
    assert rc == 1 and f"config key '{config}.langevin.steps': 0 is less than the minimum of 1" in error_line(err)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- divergence


@pytest.mark.slow
def test_diverging_langevin_stops_with_the_promised_message_and_keeps_earlier_iterations(base, tmp_path):
    """Persistent chains with s = 1000 grow ~1e6-fold per iteration: finite after iteration 1, Inf in 2."""
    run = TinyRun(tmp_path / "wild", base.data, "wild")
    for step in (lambda: run.write_config(langevin={"step_size": 1000.0}), run.init, lambda: run.infer(1),
                 lambda: run.learn(1)):
        rc, err = step()
        assert rc == 0, err
    before = tree(tmp_path)
    rc, err = run.infer(2)
    line = error_line(err)
    assert rc == 1 and line.startswith("shortrun-ot: error: run 'wild', iteration 2, stage infer: ")
    assert "non-finite" in line and "lower 'langevin.step_size' (now 1000.0)" in line
    assert tree(tmp_path) == before  # iterations 0 and 1 untouched, nothing of iteration 2 written


def test_non_finite_learning_loss_names_the_parameters(base, tmp_path, unchanged):
    """sigma = 1e-25 makes ||I - g(z)||^2 / (2 sigma^2) overflow in float32 at the first batch."""
    run = TinyRun(tmp_path, base.data)
    assert run.write_config(sigma=1e-25)[0] == 0
    before = tree(tmp_path)
    rc, err = run.learn(1, latents=base.it(1, "infer.pt"), model=base.it(0, "init.pt"))
    line = error_line(err)
    assert rc == 1 and "run 'tiny', iteration 1, stage learn: the learning loss became non-finite" in line
    assert "lower 'learning.lr' (now 0.001) or 'langevin.step_size' (now 0.05), or raise 'sigma' (now 1e-25)" in line
    assert tree(tmp_path) == before


@pytest.mark.slow
def test_opt_in_step_size_backoff_is_deterministic_and_recorded(base, tmp_path):
    from shortrun_ot.pipeline import run_stage

    settings = json.loads(base.config.read_text())
    settings["langevin"].update(step_size=1e5, backoff=20, persistent=False)
    settings.update(train_images=12, batch_size=6)  # few images: arithmetic near overflow is slow
    stats = run_stage(settings, StageRef(1, "infer"), {"model": base.it(0, "init.pt")}, base.data,
                      tmp_path / "infer.pt", torch.device("cpu"))
    recorded = json.loads((tmp_path / "infer.json").read_text())
    assert recorded["backoff"] == stats["backoff"]
    assert [b["examples"] for b in stats["backoff"]] == [[0, 5], [6, 11]]
    assert all(b["step_size"] < 1e5 for b in stats["backoff"]) and stats["step_size"] == 1e5
    z = torch.load(tmp_path / "infer.pt")["latents"]
    assert torch.isfinite(z).all()
    # the same as running the last batch directly with the step size the back-off settled on
    generator = lambda z: z.sum(1, keepdim=True)  # noqa: E731
    images, z0 = torch.zeros(6, 1), torch.ones(6, 2)
    rng = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    backed, s = short_run_inference(generator, images, z0, steps=3, step_size=1e5, sigma=1.0, batch_size=6,
                                    rng=rng(), backoff=10)
    direct, _ = short_run_inference(generator, images, z0, steps=3, step_size=s.backoff[0]["step_size"], sigma=1.0,
                                    batch_size=6, rng=rng())
    assert torch.equal(backed, direct)
    # no key at all when it did not fire
    assert "backoff" not in json.loads(base.it(1, "infer.json").read_text())


# ---------------------------------------------------------------- through Snakemake (slow)

SNAKE_TRAINING = {"dataset": "mnist", "train_images": None, "batch_size": 50, "iterations": 2}  # 100 synthetic images
SNAKE_SHORTRUN = {"langevin": {"steps": 2, "step_size": 0.05}, "correction": {"every": 2}, "learning": {"passes": 1}}


class Snakemake:
    """The real Snakemake on the repository's Snakefile, with ``workdir`` as its working directory.

    It runs in a new session, so a stage that kills its process group kills Snakemake and its
    jobs, as a cluster pre-emption would, but not pytest. Output goes to files (no pipe to fill).
    """

    def __init__(self, workdir: Path, *args: str, env: dict | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "params.yaml").exists():  # one snapshot for every run of this module
            (workdir / "params.yaml").write_text(PARAMS)
        self.cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                    "--cores", "2", *args]
        self.out, self.err = (workdir / "snakemake.out").open("w+"), (workdir / "snakemake.err").open("w+")
        self.process = subprocess.Popen(self.cmd, cwd=workdir, stdout=self.out, stderr=self.err, text=True,
                                        start_new_session=True,
                                        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})

    def result(self) -> subprocess.CompletedProcess:
        """Wait for Snakemake to end (once) and return what it did."""
        if not hasattr(self, "_result"):
            returncode = self.process.wait()
            outputs = []
            for f in (self.out, self.err):
                f.seek(0)
                outputs.append(f.read())
                f.close()
            self._result = subprocess.CompletedProcess(self.cmd, returncode, *outputs)
        return self._result


def snakemake_in(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return Snakemake(workdir, *args, env=env).result()


def snake_config(root: Path, data: Path) -> Path:
    """One 2-iteration run `ours` (correction at t = 2) and `wild`, whose step size diverges at t = 1."""
    config = {
        "results": str(root / "results"), "device": "cpu",
        "data": {"raw_root": str(data / "raw"), "prepared": str(data / "prepared")},
        "training": SNAKE_TRAINING,
        "methods": {"shortrun": SNAKE_SHORTRUN},
        "runs": {"wild": {"method": "shortrun", "langevin": {"step_size": 1e5}}},
        "evaluation": {"runs": ["ours"]},
        "anomaly": {"runs": []},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def target(root: Path, run: str, t: int, name: str) -> str:
    return str(root / "results" / "runs" / run / f"it{t:04d}" / name)


def run_outputs(root: Path, run: str = "ours") -> dict[str, object]:
    """Every output of a run but its logs: SHA-256 of tensors and manifests, stage JSON without timings."""
    outputs = {}
    base = root / "results" / "runs" / run
    for path in sorted(base.rglob("*")):
        if path.is_file() and "logs" not in path.parts:
            if path.suffix == ".json" and not path.name.endswith(".pt.json"):
                outputs[str(path.relative_to(base))] = {k: v for k, v in json.loads(path.read_text()).items()
                                                        if not k.endswith("seconds")}
            else:
                outputs[str(path.relative_to(base))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return outputs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted Snakemake run of `ours`, plus the diverging `wild` (--keep-going), started in the
    background on data prepared beforehand, so that it overlaps the fault-injection test."""
    root, data = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("data")
    generator = torch.Generator().manual_seed(0)
    write_mnist_files(data / "raw" / "mnist", {
        "train_images": torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8, generator=generator),
        "train_labels": torch.arange(100) % 10,
        "test_images": torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8, generator=generator),
        "test_labels": torch.arange(20) % 10,
    })
    assert cli_main("prepare", "--dataset", "mnist", "--raw-root", data / "raw" / "mnist",
                    "--out", data / "prepared" / "mnist.pt")[0] == 0
    config = snake_config(root, data)
    background = Snakemake(root / "wd", "--keep-going", target(root, "ours", 2, "learn.pt"),
                           target(root, "wild", 1, "infer.pt"), "--configfile", str(config))
    yield root, data, background
    background.result()


@pytest.mark.slow
def test_killed_stages_resume_to_the_bitwise_result_of_an_uninterrupted_run(reference, tmp_path):
    ref_root, data, background = reference
    config = snake_config(tmp_path, data)
    wd, goal = tmp_path / "wd", target(tmp_path, "ours", 2, "learn.pt")
    command = (goal, "--configfile", str(config))
    it0 = tmp_path / "results" / "runs" / "ours" / "it0000"

    # 1. The init stage is SIGKILLed half-way through writing its state; Snakemake survives.
    result = snakemake_in(wd, *command, env={FAULT_ENV: "it0000/init.pt:partial"})
    assert result.returncode != 0 and "Error in rule stage" in result.stderr
    assert not (it0 / "init.pt").exists() and len(list(it0.glob(".init.pt.*.tmp"))) == 1
    assert not (it0 / "init.pt.json").exists()

    # 2. The same command again; at iteration 2 the learning stage kills its whole process group
    #    (itself and Snakemake) right after its state is complete, before its manifest and report.
    result = snakemake_in(wd, *command, env={FAULT_ENV: "it0002/learn.pt:after-rename:group"})
    assert result.returncode == -signal.SIGKILL
    it2 = tmp_path / "results" / "runs" / "ours" / "it0002"
    assert (it2 / "learn.pt").is_file() and not (it2 / "learn.json").exists()
    assert not list(it0.glob(".*.tmp"))  # the rerun of init removed the stale temporary file
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*")
            if p.is_file() and "logs" not in p.parts and p != it2 / "learn.pt"}

    # 3. Snakemake asks for --rerun-incomplete; its lock outlived it too, so --unlock first.
    result = snakemake_in(wd, *command)
    assert result.returncode != 0 and "--rerun-incomplete" in result.stderr
    assert str(it2 / "learn.pt") in result.stderr
    assert snakemake_in(wd, "--unlock", "--configfile", str(config)).returncode == 0

    # 4. With --rerun-incomplete only the killed learning stage runs again.
    result = snakemake_in(wd, *command, "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("rule stage:") == 1 and "wildcards: run=ours, t=0002, stage=learn" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in done} == done

    # The end result equals the uninterrupted run bitwise (CPU, same seed), with nothing left over.
    ref_result = background.result()
    assert Path(target(ref_root, "ours", 2, "learn.pt")).is_file(), ref_result.stderr[-3000:]
    assert run_outputs(tmp_path) == run_outputs(ref_root)
    assert not list((tmp_path / "results").rglob("*.tmp"))


@pytest.mark.slow
def test_divergence_message_reaches_the_user_through_snakemake(reference):
    root, _, background = reference
    result = background.result()
    assert result.returncode != 0
    expected = ("shortrun-ot: error: run 'wild', iteration 1, stage infer: log p(I, z) became non-finite")
    lines = [line for line in result.stderr.splitlines() if line.startswith(expected)]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "lower 'langevin.step_size' (now 100000.0) in params.yaml or the run's overrides" in lines[0]
    wild = root / "results" / "runs" / "wild"
    assert (wild / "it0000" / "init.pt").is_file() and not (wild / "it0001" / "infer.pt").exists()
    assert Path(target(root, "ours", 2, "learn.pt")).is_file()  # --keep-going finished the good run
