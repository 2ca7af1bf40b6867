"""Benchmark of the three training stages at a given size on the available device.

Iteration 1 of the short-run method (``runs.ours`` of params.yaml at the benchmark's size, with
a correction in iteration 1), from an iteration 0 written by the command line's ``init`` stage.
Two parts, one table:

- **speed** (in this process): the inference stage (K Langevin steps for n images, Eq. 7),
  the learning stage (L2 Adam passes) and the OT correction, timed after a warm-up.
  Learning and correction run the method's own stages (``ShortRunOT.learn``/``correct``);
  the inference variants run the inference stage's arithmetic
  (``shortrun_ot.methods.shortrun.infer_latents``) on a loaded generator, so that all of them
  time the same work: ``eager`` (IEEE float32), ``graph`` (each batch's chain replayed as a
  CUDA graph), ``tf32`` and ``graph+tf32`` (TF32 matrix units), ``compile``
  (``torch.compile`` of the generator; its compile time is reported apart). Each variant's
  latents are compared with ``eager``'s (``max|dz|``).
- **process** (the real command line, ``shortrun_ot stage``, one process per stage, as
  Snakemake runs it): the seconds from process start to the first batch (imports, CUDA
  start-up, loading data and state files: ``startup``) and the share of the process's wall
  time outside the stage's arithmetic (``overhead``).

Floating-point work is counted with ``torch.utils.flop_counter.FlopCounterMode`` on the real
generator (matrix products and convolutions, forward and backward; element-wise operations
such as batch norm are not counted); ``TFLOP/s`` divides it by the measured time and
``of peak`` by the rate of one large matrix product measured in the same precision mode on
the same device. Examples::

    python benchmarks/stage_benchmark.py --data data/prepared/mnist5k.pt --n 2000 --steps 10
    python benchmarks/stage_benchmark.py --data data/prepared/mnist.pt --device cuda --json out.json
    python benchmarks/stage_benchmark.py --data data/prepared/svhn.pt --n 2000 --steps 10 --no-process
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from shortrun_ot import layout
from shortrun_ot.config import run_settings, set_tf32, stage_settings
from shortrun_ot.data import manifest_path
from shortrun_ot.models import ARCHITECTURES, architecture_of
from shortrun_ot.io import save_json
from shortrun_ot.langevin import log_joint
from shortrun_ot.learning import reconstruction_loss
from shortrun_ot.methods.base import Method, StageContext, StageRef, StateFile
from shortrun_ot.methods.shortrun import infer_latents, load_generator
from shortrun_ot.pipeline import build_method, load_state, load_training_images

from reporting import machine_description, print_table  # benchmarks/ (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "shortrun_ot"]
INFER_VARIANTS = ("eager", "graph", "tf32", "graph+tf32", "compile")
COLUMNS = [  # header, row key, width, format
    ("stage", "stage", 7, ""),
    ("variant", "variant", 10, ""),
    ("n", "n", 6, ""),
    ("K", "steps", 3, ""),
    ("device", "device", 6, ""),
    ("seconds", "seconds", 8, ".3f"),
    ("images/s", "images_per_second", 10, ".0f"),
    ("TFLOP/s", "tflops", 8, ".2f"),
    ("of peak", "peak_fraction", 7, ".1%"),
    ("max|dz|", "max_abs_diff", 8, ".1e"),
    ("startup", "startup_seconds", 7, ".2f"),
    ("overhead", "overhead_share", 8, ".1%"),
]


def settings_for(args) -> dict:
    """The paper's settings (params.yaml, run ``ours``) for the dataset of ``--data`` (its manifest's
    name: MNIST, SVHN, CelebA), at the benchmark's size."""
    dataset = json.loads(manifest_path(args.data).read_text())["name"]
    settings = run_settings(yaml.safe_load((REPO / "params.yaml").read_text()), "ours", dataset)
    settings.update(train_images=args.n, batch_size=args.batch_size)
    settings["langevin"]["steps"] = args.steps
    settings["learning"]["passes"] = args.passes
    settings["correction"]["every"] = 1  # L = 1: iteration 1 has its correction stage
    return settings


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def matmul_rate(device: torch.device, tf32: bool) -> float:
    """FLOP/s of one large float32 matrix product (median of 5) in the given precision mode."""
    size = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    set_tf32(tf32)
    times = []
    for _ in range(6):
        _, seconds = timed(lambda: a @ b, device)
        times.append(seconds)
    set_tf32(False)
    return 2 * size**3 / sorted(times[1:])[2]


def flops_per_image(generator, settings, device) -> dict:
    """Counted FLOPs per image of one Langevin step and of one learning update (batch of 64).

    A Langevin step is g's forward pass and the backward pass to z alone (what autograd.grad
    computes); it is counted through ``backward`` with frozen weights because the counter's
    module hooks do not support ``autograd.grad`` on a leaf.
    """
    z = torch.randn(64, settings["latent_dim"], device=device, requires_grad=True)
    shape = ARCHITECTURES[architecture_of(settings["dataset"])]["image_shape"]
    images = torch.rand(64, *shape, device=device) * 2 - 1
    generator.requires_grad_(False)
    with FlopCounterMode(display=False) as counter:
        log_joint(generator, z, images, settings["sigma"]).sum().backward()
    generator.requires_grad_(True)
    step = counter.get_total_flops() / 64
    z = z.detach()
    with FlopCounterMode(display=False) as counter:
        reconstruction_loss(generator, z, images, settings["sigma"]).backward()
    generator.zero_grad(set_to_none=True)
    return {"langevin_step": step, "learning_update": counter.get_total_flops() / 64}


def report_row(rows: list[dict], row: dict) -> None:
    """Keep ``row`` and show it at once (long runs show their progress)."""
    rows.append(row)
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
    print(f"[{time.strftime('%H:%M:%S')}] {json.dumps(shown)}", file=sys.stderr, flush=True)


def run_cli(method: Method, ref: StageRef, run_dir: Path, args: list[str]) -> tuple[dict, float]:
    """One stage through the real command line, with the run's file names (``shortrun_ot.layout``):
    (its JSON report, the process's wall seconds)."""
    out = layout.state_file(run_dir, ref)
    inputs = [f"{role}={path}" for role, path in layout.input_files(run_dir, method, ref.stage, ref.iteration).items()]
    start = time.perf_counter()
    subprocess.run([*CLI, "stage", "--stage", ref.stage, "--iteration", str(ref.iteration), *args,
                    "--inputs", *inputs, "--out", str(out)],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    return json.loads(layout.report_of(out).read_text()), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="prepared dataset (.pt), e.g. data/prepared/mnist.pt")
    parser.add_argument("--n", type=int, default=None, help="training images (default: all in --data)")
    parser.add_argument("--steps", type=int, default=50, help="K Langevin steps (paper: 50)")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=3, help="L2 learning passes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated inference variants of {INFER_VARIANTS} (default: all that apply)")
    parser.add_argument("--no-process", action="store_true", help="skip the command-line (start-up) part")
    parser.add_argument("--json", default=None, help="also write rows and machine description here")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    on_cuda = device.type == "cuda"
    variants = args.variants.split(",") if args.variants else (
        list(INFER_VARIANTS) if on_cuda else ["eager"])
    unknown = set(variants) - set(INFER_VARIANTS)
    if unknown or (not on_cuda and set(variants) - {"eager", "compile"}):
        parser.error(f"variants {sorted(unknown) or variants} do not apply on {device}")

    settings = settings_for(args)
    method = build_method(settings)
    rows, workdir = [], Path(tempfile.mkdtemp(prefix="stage-benchmark-"))
    config, run = workdir / "config.json", workdir / "run"
    subprocess.run([*CLI, "write-config", "--run", "benchmark", "--settings",
                    json.dumps(stage_settings(settings)), "--out", str(config)], check=True, cwd=REPO)
    common = ["--config", str(config), "--data", args.data, "--device", str(device)]
    run_cli(method, StageRef(0, "init"), run, common)

    images = load_training_images(args.data, settings).to(device)
    n = len(images)
    init = load_state(layout.state_file(run, StageRef(0, "init")), settings)
    z0 = init.latents("latents", n, settings["latent_dim"])
    generator = load_generator(init, settings, device)
    flops = flops_per_image(generator, settings, device)
    peak = {False: matmul_rate(device, False)}
    if on_cuda:
        peak[True] = matmul_rate(device, True)
    base = {"n": n, "steps": args.steps, "device": device.type}

    def infer(model, graph, count=None):
        """Iteration 1's inference arithmetic for the first ``count`` images (default: all)."""
        return infer_latents(settings, model, images[:count], z0[:count], method.rng(1, "langevin"), device,
                             cuda_graph=graph)

    # speed: inference variants
    reference = None
    for variant in variants:
        tf32, graph = "tf32" in variant, "graph" in variant
        row = {**base, "stage": "infer", "variant": variant}
        try:
            model = torch.compile(generator) if variant == "compile" else generator
            set_tf32(tf32)
            _, warm_seconds = timed(lambda: infer(model, graph, settings["batch_size"]), device)
            (z, stats), seconds = timed(lambda: infer(model, graph), device)
        except Exception as exc:  # a variant this machine cannot run is reported, not fatal
            report_row(rows, {**row, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(f"infer {variant}: {rows[-1]['error']}", file=sys.stderr)
            continue
        finally:
            set_tf32(False)
        reference = z if reference is None else reference
        work = flops["langevin_step"] * n * args.steps
        report_row(rows, {**row, "seconds": seconds, "images_per_second": n / seconds,
                     "tflops": work / seconds / 1e12, "peak_fraction": work / seconds / peak[tf32],
                     "max_abs_diff": (z - reference).abs().max().item(),
                     "log_joint_end": stats.log_joint_end, "warmup_seconds": warm_seconds})

    # speed: the method's learning stage (from iteration 0's generator and latents) and its correction
    ctx = StageContext(images, device)
    for tf32 in ([False, True] if on_cuda else [False]):
        set_tf32(tf32)
        (_, report), seconds = timed(lambda: method.run("learn", 1, {"model": init, "latents": init}, ctx), device)
        set_tf32(False)
        work = flops["learning_update"] * n * args.passes
        report_row(rows, {**base, "stage": "learn", "variant": "tf32" if tf32 else "eager", "steps": None,
                     "seconds": seconds, "images_per_second": n * args.passes / seconds,
                     "tflops": work / seconds / 1e12, "peak_fraction": work / seconds / peak[tf32],
                     "loss_last_pass": report["loss_last_pass"]})
    inputs = {"latents": StateFile({"latents": reference.cpu()}), "prior": init}
    (_, report), seconds = timed(lambda: method.run("correct", 1, inputs, ctx), device)
    report_row(rows, {**base, "stage": "correct", "variant": "default", "steps": None, "seconds": seconds,
                 "images_per_second": n / seconds, "cost": report["cost"], "gap": report["gap"]})

    # process: iteration 1's stages, each as its own command-line process, as Snakemake runs them
    if not args.no_process:
        graph_works = any(r["variant"] == "graph" and "error" not in r for r in rows)
        flags = ["--cuda-graphs"] if graph_works else []  # only inference uses them
        for stage in ("infer", "correct", "learn"):
            report, wall = run_cli(method, StageRef(1, stage), run, [*common, *flags])
            report_row(rows, {**base, "stage": stage, "variant": "process",
                         "steps": args.steps if stage == "infer" else None,
                         "seconds": wall, "compute_seconds": report["compute_seconds"],
                         "startup_seconds": report["startup_seconds"],
                         "overhead_share": 1 - report["compute_seconds"] / wall})

    print_table(rows, COLUMNS)
    if args.json:
        save_json({"machine": machine_description(device), "flops_per_image": flops, "matmul_flops_per_second":
                   {("tf32" if k else "ieee_float32"): v for k, v in peak.items()}, "batch_size": args.batch_size,
                   "rows": rows}, args.json)


if __name__ == "__main__":
    main()
