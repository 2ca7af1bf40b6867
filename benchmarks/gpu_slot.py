"""One call for a short GPU slot: stage benchmark, Table 1's MNIST rows and Table 2 within a wall-clock budget.

On a freshly started GPU machine that holds only this repository (plus carried data and wheels; no network),
this script runs three parts in order and writes every table, figure and JSON under one small folder
(docs/gpu_slot.md has the command, what to carry and what comes back):

1. ``benchmark``: the training data prepared through the workflow, then ``benchmarks/stage_benchmark.py`` at
   the configuration's size (images, batch, K, learning passes of run ``ours``);
2. ``table1``: Table 1's runs through the workflow (Snakemake), one run per call, ``ours`` and ``abp``
   first; then Table 1 of the runs that finished;
3. ``table2``: Table 2's anomaly runs through the workflow, one call per (seed, held-out digit), seed 0 of
   every digit first; then Table 2 of the runs that finished.

The workflow's configuration is ``params.yaml`` with ``config/gpu.yaml`` and the ``--configfile`` overlays
merged over it (a tiny overlay makes the CPU test). Each part has a deadline: the cumulative share of the
budget (``--shares``; time a part leaves unused goes to the next). A step (the benchmark, one Snakemake call)
starts only when at least the part's minimum (``--min-seconds``) is left before its deadline, and is stopped
(SIGTERM to its process group, SIGKILL 10 s later) when it reaches it. ``summary.json`` and ``summary.md``
say, per part and step, what finished, what was stopped or skipped and why, and the seconds each took.
Stopped runs keep their finished blocks of iterations: the same command resumes them in a later slot.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PARTS = ("benchmark", "table1", "table2")
DEFAULT_SHARES = (0.2, 0.6, 0.2)  # of the usable budget, per part
DEFAULT_MIN_SECONDS = {"benchmark": 30.0, "table1": 120.0, "table2": 60.0}  # left before a step may start
RESERVE_SECONDS = 30.0  # kept at the end of the budget: stopping a step, assembling tables, the summary
STOP_GRACE_SECONDS = 10.0  # between SIGTERM and SIGKILL of a step that reached its deadline
TABLE_TIMEOUT_SECONDS = 120.0  # assembling a table from finished runs takes seconds
FIRST_RUNS = ("ours", "abp")  # Table 1's rows run first
MAX_COPY_BYTES = 2_000_000  # larger result files (checkpoints, sample tensors) stay behind
MAX_OUT_BYTES = 8_000_000  # no result file is copied once the output folder would grow past this
LOG_TAIL_BYTES = 32_000  # each step's log is kept as its last bytes
REQUIRED_MODULES = ("jsonschema", "pytorch_fid.inception", "snakemake.cli")  # beyond torch, numpy, yaml, ...
PAPER_RESULTS = "workflow/resources/paper_results.csv"


@dataclass
class Step:
    """One command of a part: how it ended and the seconds it took."""

    name: str
    status: str  # finished | failed | stopped | skipped
    seconds: float = 0.0
    note: str = ""


@dataclass
class Part:
    """One part of the slot: its deadline (seconds from the start), its steps and what it wrote."""

    name: str
    deadline: float
    status: str = "skipped"  # finished | partial | failed | skipped
    seconds: float = 0.0
    steps: list[Step] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    note: str = ""

    def conclude(self) -> None:
        """The part's status from its steps': finished when all finished, partial when some did."""
        ran = [s for s in self.steps if s.status != "skipped"]
        done = [s for s in self.steps if s.status == "finished"]
        if not ran:
            self.status = "skipped"
        elif len(done) == len(self.steps):
            self.status = "finished"
        else:
            self.status = "partial" if done else "failed"


class Slot:
    """The clock, the environment and the folders of one call."""

    def __init__(self, args: argparse.Namespace):
        self.start = time.monotonic()
        self.budget = args.budget_seconds
        self.out = Path(args.out).resolve()
        self.work = Path(tempfile.mkdtemp(prefix="gpu-slot-"))
        self.logs = self.out / "logs"
        self.env = dict(os.environ)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def run(self, part: str, name: str, cmd: list[str], deadline: float) -> Step:
        """Step ``name`` of ``part``: ``cmd`` in the repository until it ends or the slot reaches ``deadline``
        (seconds from the start), its output in ``logs/<part>-<name>.log`` (the last :data:`LOG_TAIL_BYTES`)."""
        log = self.work / f"{part}-{name}.log"
        started = time.monotonic()
        with open(log, "wb") as sink:
            process = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=sink, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # its own process group: stopped as a whole
            try:
                code = process.wait(timeout=max(deadline - self.elapsed(), 0.0))
                status, note = ("finished", "") if code == 0 else ("failed", f"exit status {code}")
            except subprocess.TimeoutExpired:
                stop(process)
                status, note = "stopped", f"reached its deadline at {deadline:.0f} s"
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(log, "rb") as f:
            f.seek(max(log.stat().st_size - LOG_TAIL_BYTES, 0))
            (self.logs / log.name).write_bytes(f.read())
        print(f"[{self.elapsed():6.0f} s] {part} {name}: {status} {note}".rstrip(), file=sys.stderr, flush=True)
        return Step(name, status, time.monotonic() - started, note)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group (Snakemake then stops its jobs and marks their outputs incomplete), then,
    after at most :data:`STOP_GRACE_SECONDS`, SIGKILL to whatever of the group is left."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def deadlines(usable: float, shares: list[float]) -> dict[str, float]:
    """Each part's deadline in seconds from the start: the cumulative shares of the usable budget."""
    total, marks = 0.0, {}
    for part, share in zip(PARTS, shares):
        total += share
        marks[part] = usable * min(total, 1.0)
    return marks


def install_wheels(slot: Slot, wheels: Path) -> Step:
    """``pip install --no-index --no-deps`` of every carried wheel into a folder put on ``PYTHONPATH``."""
    site = slot.work / "site"
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    step = slot.run("setup", "wheels", [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                      "--no-compile", "--target", str(site), *files], slot.budget)
    if step.status == "finished":
        prepend_path(slot, site)
        step.note = f"{len(files)} wheels from {wheels}"
    return step


def prepend_path(slot: Slot, folder: Path) -> None:
    """Put ``folder`` first on the import path of this process and of every command it starts."""
    sys.path.insert(0, str(folder))
    slot.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), slot.env.get("PYTHONPATH")]))


def missing_modules(slot: Slot) -> str:
    """The error of importing :data:`REQUIRED_MODULES` in the commands' environment ('' when all import)."""
    check = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    result = subprocess.run([sys.executable, "-c", check, *REQUIRED_MODULES], cwd=REPO, env=slot.env,
                            capture_output=True, text=True)
    return result.stderr.strip().splitlines()[-1] if result.returncode else ""


def workflow_config(configfiles: list[str]) -> dict:
    """``params.yaml`` with the overlays merged over it, as Snakemake merges its ``--configfile``s."""
    from shortrun_ot.config import deep_merge

    config = yaml.safe_load((REPO / "params.yaml").read_text())
    for path in configfiles:
        config = deep_merge(config, yaml.safe_load((REPO / path).read_text()) or {})
    return config


def snakemake(slot: Slot, configfiles: list[str], part: Part, name: str, targets: list[str]) -> Step:
    """Step ``name`` of ``part``: one Snakemake call for ``targets`` (paths relative to the repository), which
    resumes what an earlier, stopped call left."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(os.cpu_count() or 1), "--rerun-incomplete",
           "--keep-going", "--configfile", *configfiles, "--", *targets]
    return slot.run(part.name, name, cmd, part.deadline)


def may_start(slot: Slot, part: Part, minimum: float, name: str) -> Step | None:
    """None when a step may start (at least ``minimum`` seconds left before the part's deadline), else the
    skipped step saying why."""
    left = part.deadline - slot.elapsed()
    if left >= minimum:
        return None
    return Step(name, "skipped", note=f"{max(left, 0):.0f} s left before the part's deadline, needs {minimum:.0f}")


def copy_small(source: Path, target: Path, out: Path) -> bool:
    """Copy ``source`` to ``target`` (under ``out``) if it exists, is at most :data:`MAX_COPY_BYTES` and keeps
    ``out`` within :data:`MAX_OUT_BYTES`."""
    if not source.is_file() or source.stat().st_size > MAX_COPY_BYTES:
        return False
    if sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) + source.stat().st_size > MAX_OUT_BYTES:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return True


def benchmark_part(slot: Slot, part: Part, config: dict, configfiles: list[str], minimum: float,
                   extra: list[str] | None) -> None:
    """Part 1: prepare the training data (the workflow's rule), then the stage benchmark at run ``ours``'s size."""
    from shortrun_ot.config import run_settings

    ours = run_settings(config, "ours")
    data = f"{config['data']['prepared']}/{ours['dataset']}.pt"
    part.steps.append(may_start(slot, part, 0.0, "prepare") or snakemake(slot, configfiles, part, "prepare", [data]))
    if part.steps[-1].status != "finished":
        part.steps.append(Step("stage_benchmark", "skipped", note="the training data was not prepared"))
        return
    if (skipped := may_start(slot, part, minimum, "stage_benchmark")):
        part.steps.append(skipped)
        return
    result = slot.out / "benchmark" / "stage_benchmark.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    size = ["--n", str(ours["train_images"])] if ours["train_images"] else []
    cmd = [sys.executable, "benchmarks/stage_benchmark.py", "--data", data, *size,
           "--steps", str(ours["langevin"]["steps"]), "--batch-size", str(ours["batch_size"]),
           "--passes", str(ours["learning"]["passes"]), "--device", config["device"],
           *(extra if extra is not None else default_benchmark_args()), "--json", str(result)]
    part.steps.append(slot.run(part.name, "stage_benchmark", cmd, part.deadline))
    if result.is_file():
        part.outputs.append(str(result.relative_to(slot.out)))


def default_benchmark_args() -> list[str]:
    """The stage benchmark's speed part only (the command-line part repeats the correction, up to minutes at
    full MNIST), with the IEEE float32 and TF32 inference variants on a GPU."""
    import torch

    return ["--no-process", *(["--variants", "eager,tf32"] if torch.cuda.is_available() else [])]


def table1_runs(config: dict) -> list[str]:
    """Table 1's run keys (each of ``evaluation.runs`` on each of ``evaluation.datasets``), ours and ABP first."""
    from shortrun_ot.config import all_run_settings, table1_runs as runs_of

    runs = runs_of(config, all_run_settings(config))
    return sorted(runs, key=lambda run: (FIRST_RUNS.index(run) if run in FIRST_RUNS else len(FIRST_RUNS)))


def table1_part(slot: Slot, part: Part, config: dict, configfiles: list[str], minimum: float) -> None:
    """Part 2: each of Table 1's runs through the workflow (its metrics, history and sample grid), then Table 1
    of the runs that finished, with each run's small files."""
    metrics = []
    for run in table1_runs(config):
        run_dir = f"{config['results']}/runs/{run}"
        part.steps.append(may_start(slot, part, minimum, run) or snakemake(
            slot, configfiles, part, run, [f"{run_dir}/metrics.json", f"{run_dir}/history.csv",
                                           f"{run_dir}/figures/grid.png"]))
        for name in ("metrics.json", "history.csv", "figures/grid.png", "final/training.json"):
            if copy_small(REPO / run_dir / name, slot.out / "table1" / run / Path(name).name, slot.out):
                part.outputs.append(f"table1/{run}/{Path(name).name}")
        if (REPO / run_dir / "metrics.json").is_file():
            metrics.append(f"{run_dir}/metrics.json")
    assemble(slot, part, "table1", "--metrics", metrics)


def table2_part(slot: Slot, part: Part, config: dict, configfiles: list[str], minimum: float) -> None:
    """Part 3: Table 2's anomaly runs through the workflow, one call per (seed, held-out digit) with every model
    of ``anomaly.runs``, seed 0 of each digit first; then Table 2 of the runs that finished."""
    from shortrun_ot.config import anomaly_run

    anomaly, files = config["anomaly"], []
    for seed in range(anomaly["seeds"]):
        for digit in anomaly["digits"]:
            name = f"digit{digit}-seed{seed}"
            runs = [anomaly_run(model, digit, seed) for model in anomaly["runs"]]
            targets = [f"{config['results']}/runs/{run}/anomaly.json" for run in runs]
            part.steps.append(may_start(slot, part, minimum, name) or snakemake(slot, configfiles, part, name, targets))
            for run, target in zip(runs, targets):
                if (REPO / target).is_file():
                    files.append(target)
                if copy_small(REPO / target, slot.out / "table2" / f"{run}.json", slot.out):
                    part.outputs.append(f"table2/{run}.json")
    assemble(slot, part, "table2", "--anomaly", files)


def assemble(slot: Slot, part: Part, table: str, flag: str, inputs: list[str]) -> None:
    """Write ``<table>/<table>.csv`` and ``.md`` from the finished runs' files with the workflow's command."""
    if not inputs:
        part.note = f"{table} not written: no run finished"
        return
    csv, markdown = slot.out / table / f"{table}.csv", slot.out / table / f"{table}.md"
    csv.parent.mkdir(parents=True, exist_ok=True)
    step = slot.run(part.name, "assemble", [sys.executable, "-m", "shortrun_ot", table, flag, *inputs,
                                          "--reference", PAPER_RESULTS, "--csv", str(csv),
                                          "--markdown", str(markdown)],
                    slot.elapsed() + TABLE_TIMEOUT_SECONDS)
    part.steps.append(step)
    part.outputs += [str(p.relative_to(slot.out)) for p in (csv, markdown) if p.is_file()]


def machine() -> dict:
    """The device and software behind the numbers."""
    import platform

    import torch

    cuda = torch.cuda.is_available()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count()}


def unfinished(steps: list[Step]) -> list[str]:
    """The steps that did not finish, grouped by how they ended and why: ``status (note): names``."""
    groups: dict[tuple[str, str], list[str]] = {}
    for step in steps:
        if step.status != "finished":
            groups.setdefault((step.status, step.note), []).append(step.name)
    lines = []
    for (status, note), names in groups.items():
        listed = ", ".join(names if len(names) <= 6 else [*names[:3], f"... ({len(names)} in all)"])
        lines.append(f"{status}{f' ({note})' if note else ''}: {listed}")
    return lines


def write_summary(slot: Slot, parts: list[Part], setup: list[Step], info: dict) -> dict:
    """``summary.json`` (every step) and ``summary.md`` (each part's status, seconds, what finished and what did
    not; the steps that ran; the tables)."""
    summary = {**info, "budget_seconds": slot.budget, "wall_seconds": round(slot.elapsed(), 1),
               "setup": [asdict(s) for s in setup],
               "parts": [{**asdict(p), "unfinished": unfinished(p.steps)} for p in parts]}
    lines = [f"# GPU slot, {info['date']}: {info['device']}", "",
             f"Budget {slot.budget:.0f} s, used {slot.elapsed():.0f} s; configuration: "
             f"{' + '.join(info['configfiles'])}.", "",
             "| part | status | seconds | deadline (s) | finished | not finished |", "|---|---|---|---|---|---|"]
    for part, record in zip(parts, summary["parts"]):
        done = ", ".join(s.name for s in part.steps if s.status == "finished")
        lines.append(f"| {part.name} | {part.status} | {part.seconds:.1f} | {part.deadline:.0f} | {done} | "
                     f"{'; '.join(record['unfinished'] + ([part.note] if part.note else []))} |")
    lines += ["", "| part | step | status | seconds | note |", "|---|---|---|---|---|"]
    for name, steps in [("setup", setup), *((p.name, p.steps) for p in parts)]:
        lines += [f"| {name} | {s.name} | {s.status} | {s.seconds:.1f} | {s.note} |"
                  for s in steps if s.status != "skipped"]
    for table in ("table1", "table2"):
        if (slot.out / table / f"{table}.md").is_file():
            lines += ["", (slot.out / table / f"{table}.md").read_text().rstrip()]
    (slot.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (slot.out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def pack(out: Path) -> None:
    """Move everything but the two summaries into ``gpu_slot.tar.gz`` (the device tool returns a few files)."""
    entries = sorted(out.iterdir())
    with tarfile.open(out / "gpu_slot.tar.gz", "w:gz") as tar:
        for path in entries:
            tar.add(path, arcname=path.name)
    for path in entries:
        if path.name not in ("summary.json", "summary.md"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def prepare_out(out: Path) -> None:
    """An empty output folder; a previous slot's folder (it has a summary) is replaced, anything else refused."""
    if out.is_dir() and any(out.iterdir()):
        if not (out / "summary.json").is_file():
            sys.exit(f"{out} is not empty and holds no earlier summary.json: choose an empty folder with --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "results/gpu_slot",
                        help="output folder (default: $OUT if set, else results/gpu_slot)")
    parser.add_argument("--budget-seconds", type=float, default=660.0, help="wall-clock budget of the whole call")
    parser.add_argument("--configfile", nargs="+", default=[], metavar="FILE",
                        help="overlays merged over params.yaml and config/gpu.yaml (e.g. a tiny configuration)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run")
    parser.add_argument("--shares", nargs=3, type=float, default=list(DEFAULT_SHARES), metavar="SHARE",
                        help="each part's share of the budget (benchmark, table1, table2)")
    parser.add_argument("--min-seconds", nargs="+", default=[], metavar="PART=SECONDS",
                        help=f"seconds a part needs left before its deadline to start a step "
                             f"(default {DEFAULT_MIN_SECONDS})")
    parser.add_argument("--benchmark-args", default=None,
                        help="arguments for stage_benchmark.py beside the size (default: --no-process, and "
                             "--variants eager,tf32 on a GPU)")
    parser.add_argument("--wheels", default="wheels", help="folder of carried wheels, installed first if present")
    parser.add_argument("--fid-weights", default=None, help="FID Inception weights (sets SHORTRUN_OT_FID_WEIGHTS)")
    parser.add_argument("--pack", action="store_true",
                        help="leave summary.json, summary.md and gpu_slot.tar.gz (everything) in --out")
    args = parser.parse_args(argv)
    minimum = dict(DEFAULT_MIN_SECONDS)
    for item in args.min_seconds:
        part, _, seconds = item.partition("=")
        if part not in PARTS or not seconds:
            parser.error(f"--min-seconds {item!r}: expected PART=SECONDS with PART one of {', '.join(PARTS)}")
        minimum[part] = float(seconds)
    args.min_seconds = minimum
    if args.budget_seconds <= RESERVE_SECONDS:
        parser.error(f"--budget-seconds must exceed the {RESERVE_SECONDS:.0f} s kept for stopping and the summary")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    prepare_out(Path(args.out))
    slot = Slot(args)
    configfiles = ["config/gpu.yaml", *(str(Path(f).resolve()) for f in args.configfile)]
    setup = []
    if Path(args.wheels).is_dir() and any(Path(args.wheels).glob("*.whl")):
        setup.append(install_wheels(slot, Path(args.wheels).resolve()))
    if importlib.util.find_spec("shortrun_ot") is None:
        prepend_path(slot, REPO / "src")  # the repository alone, not installed
    if args.fid_weights:
        slot.env["SHORTRUN_OT_FID_WEIGHTS"] = str(Path(args.fid_weights).resolve())
    missing = missing_modules(slot)
    if missing:
        setup.append(Step("imports", "failed", note=f"{missing}: carry its wheels (docs/gpu_slot.md)"))
    info = {**machine(), "configfiles": configfiles, "arguments": vars(args)}

    marks = deadlines(args.budget_seconds - RESERVE_SECONDS, args.shares)
    parts = [Part(name, marks[name]) for name in PARTS]
    config = workflow_config(configfiles) if not missing else None
    runners = {
        "benchmark": lambda p: benchmark_part(slot, p, config, configfiles, args.min_seconds["benchmark"],
                                              None if args.benchmark_args is None else args.benchmark_args.split()),
        "table1": lambda p: table1_part(slot, p, config, configfiles, args.min_seconds["table1"]),
        "table2": lambda p: table2_part(slot, p, config, configfiles, args.min_seconds["table2"]),
    }
    for part in parts:
        if missing or part.name not in args.parts:
            part.note = "packages missing (setup)" if missing else "not asked for (--parts)"
            continue
        started = time.monotonic()
        try:
            runners[part.name](part)
            part.conclude()
        except Exception as exc:  # reported; the next part still runs
            part.status, part.note = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        part.seconds = time.monotonic() - started
    summary = write_summary(slot, parts, setup, info)
    shutil.rmtree(slot.work, ignore_errors=True)
    print((slot.out / "summary.md").read_text())
    if args.pack:
        pack(slot.out)
    return summary


if __name__ == "__main__":
    main()
