"""Benchmark of the three training stages at a given size on the available device.

Two parts, one table:

- **speed** (in this process): the inference stage (K Langevin steps for n images, Eq. 7),
  the learning stage (L2 Adam passes) and the OT correction, timed after a warm-up on the
  real stage functions. Inference variants: ``eager`` (IEEE float32), ``graph`` (each
  batch's chain replayed as a CUDA graph), ``tf32`` and ``graph+tf32`` (TF32 matrix units),
  ``compile`` (``torch.compile`` of the generator; its compile time is reported apart).
  Each variant's latents are compared with ``eager``'s (``max|dz|``).
- **process** (the real command line, one process per stage, as Snakemake runs it): the
  seconds from process start to the first batch (imports, CUDA start-up, loading data and
  checkpoint: ``startup``) and the share of the process's wall time outside the stage's
  arithmetic (``overhead``).

Floating-point work is counted with ``torch.utils.flop_counter.FlopCounterMode`` on the real
generator (matrix products and convolutions, forward and backward; element-wise operations
such as batch norm are not counted); ``TFLOP/s`` divides it by the measured time and
``of peak`` by the rate of one large matrix product measured in the same precision mode on
the same device. Examples::

    python benchmarks/stage_benchmark.py --data data/prepared/mnist5k.pt --n 2000 --steps 10
    python benchmarks/stage_benchmark.py --data data/prepared/mnist.pt --device cuda --json out.json
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
from torch.utils.flop_counter import FlopCounterMode

from shortrun_ot.config import set_tf32
from shortrun_ot.io import save_json
from shortrun_ot.langevin import log_joint
from shortrun_ot.learning import reconstruction_loss
from shortrun_ot.pipeline import _correct, _infer, _learn, load_checkpoint, load_latents, load_training_images

from reporting import machine_description, print_table  # benchmarks/ (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
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
    """The paper's MNIST settings (params.yaml ``training``) at the benchmark's size."""
    import yaml

    settings = yaml.safe_load((REPO / "params.yaml").read_text())["training"]
    settings.pop("iterations")
    settings.update(dataset="mnist", train_images=args.n, batch_size=args.batch_size)
    settings["langevin"]["steps"] = args.steps
    settings["learning"]["passes"] = args.passes
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
    images = torch.rand(64, 1, 28, 28, device=device) * 2 - 1
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


def run_cli(stage: str, args: list[str]) -> tuple[dict, float]:
    """One stage through the real command line; (its JSON report, the process's wall seconds)."""
    stats = args[args.index("--stats-out") + 1]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "shortrun_ot", stage, *args], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    return json.loads(Path(stats).read_text()), wall


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

    if args.n is None:
        args.n = len(load_training_images(args.data, {"train_images": None}))
    settings = settings_for(args)
    rows, workdir = [], Path(tempfile.mkdtemp(prefix="stage-benchmark-"))
    config = workdir / "config.json"
    save_json(settings, config)
    run = workdir / "run"
    subprocess.run([sys.executable, "-m", "shortrun_ot", "init", "--config", str(config), "--data", args.data,
                    "--checkpoint-out", str(run / "it0000/checkpoint.pt"),
                    "--latents-out", str(run / "it0000/latents.pt"), "--prior-out", str(run / "prior.pt")],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)

    images = load_training_images(args.data, settings).to(device)
    generator, optimizer = load_checkpoint(run / "it0000/checkpoint.pt", settings, device, with_optimizer=True)
    z0 = load_latents(run / "it0000/latents.pt", args.n, settings["latent_dim"])
    flops = flops_per_image(generator, settings, device)
    peak = {False: matmul_rate(device, False)}
    if on_cuda:
        peak[True] = matmul_rate(device, True)
    base = {"n": args.n, "steps": args.steps, "device": device.type}

    # speed: inference variants
    reference = None
    for variant in variants:
        tf32, graph = "tf32" in variant, "graph" in variant
        row = {**base, "stage": "infer", "variant": variant}
        try:
            model = torch.compile(generator) if variant == "compile" else generator
            set_tf32(tf32)
            warm_images = images[: settings["batch_size"]]
            _, warm_seconds = timed(lambda: _infer(settings, 1, warm_images, model, z0[: len(warm_images)],
                                                   device, graph, False), device)
            (z, report), seconds = timed(lambda: _infer(settings, 1, images, model, z0, device, graph, False), device)
        except Exception as exc:  # a variant this machine cannot run is reported, not fatal
            report_row(rows, {**row, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(f"infer {variant}: {rows[-1]['error']}", file=sys.stderr)
            continue
        finally:
            set_tf32(False)
        reference = z if reference is None else reference
        work = flops["langevin_step"] * args.n * args.steps
        report_row(rows, {**row, "seconds": seconds, "images_per_second": args.n / seconds,
                     "tflops": work / seconds / 1e12, "peak_fraction": work / seconds / peak[tf32],
                     "max_abs_diff": (z - reference).abs().max().item(),
                     "log_joint_end": report["log_joint_end"], "warmup_seconds": warm_seconds})

    # speed: learning (a copy of the generator, so that each variant starts from the same state) and OT
    state = {k: v.clone() for k, v in generator.state_dict().items()}
    for tf32 in ([False, True] if on_cuda else [False]):
        generator.load_state_dict(state)
        set_tf32(tf32)
        report, seconds = timed(lambda: _learn(settings, 1, images, generator, optimizer, z0, device, False), device)
        set_tf32(False)
        work = flops["learning_update"] * args.n * args.passes
        report_row(rows, {**base, "stage": "learn", "variant": "tf32" if tf32 else "eager", "steps": None,
                     "seconds": seconds, "images_per_second": args.n * args.passes / seconds,
                     "tflops": work / seconds / 1e12, "peak_fraction": work / seconds / peak[tf32],
                     "loss_last_pass": report["loss_last_pass"]})
    prior = load_latents(run / "prior.pt", args.n, settings["latent_dim"])
    (_, report), seconds = timed(lambda: _correct(settings, 1, reference.cpu(), prior, None, device, False), device)
    report_row(rows, {**base, "stage": "correct", "variant": "default", "steps": None, "seconds": seconds,
                 "images_per_second": args.n / seconds, "cost": report["cost"], "gap": report["gap"]})

    # process: each stage as its own command-line process, as Snakemake runs it
    if not args.no_process:
        common = ["--config", str(config), "--iteration", "1", "--device", str(device)]
        it1 = run / "it0001"
        graph_works = any(r["variant"] == "graph" and "error" not in r for r in rows)
        flags = ["--cuda-graphs"] if graph_works else []
        infer, wall = run_cli("infer", [*common, *flags, "--data", args.data, "--checkpoint",
                                        str(run / "it0000/checkpoint.pt"), "--latents", str(run / "it0000/latents.pt"),
                                        "--latents-out", str(it1 / "inferred.pt"), "--stats-out", str(it1 / "infer.json")])
        processes = [("infer", infer, wall)]
        report, wall = run_cli("correct", [*common, "--latents", str(it1 / "inferred.pt"), "--prior",
                                           str(run / "prior.pt"), "--latents-out", str(it1 / "corrected.pt"),
                                           "--stats-out", str(it1 / "correct.json")])
        processes.append(("correct", report, wall))
        report, wall = run_cli("learn", [*common, "--data", args.data, "--checkpoint", str(run / "it0000/checkpoint.pt"),
                                         "--latents", str(it1 / "corrected.pt"), "--checkpoint-out",
                                         str(it1 / "checkpoint.pt"), "--stats-out", str(it1 / "learn.json")])
        processes.append(("learn", report, wall))
        for stage, report, wall in processes:
            report_row(rows, {**base, "stage": stage, "variant": "process", "steps": args.steps if stage == "infer" else None,
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
