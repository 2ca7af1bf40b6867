"""What a plan of jobs will cost, estimated before the first job starts (README, "Paper scale, GPU, cluster, DVC").

Work is counted in floating-point operations and divided by rates measured on this project's machines
(docs/performance.md, "Cost estimate"):

* the decoder g: ``decoder_flops`` of one image's forward pass (``torch.utils.flop_counter`` on the run's
  architecture; 16.2 MFLOP for Table 7's MNIST generator). Each method says what its stages and its
  reconstructions cost in these units (``Method.stage_work``, ``Method.reconstruction_flops``): a Langevin
  step is 2 forward passes' worth, a learning pass 3, an encoder method's epoch 6;
* the FID Inception: 5.7 GFLOP per image at 299 x 299;
* the exact OT correction, which is not a matrix product: its measured seconds at n = 60,000, scaled as
  n^1.5 (141 s against 9.6 s at n = 10,000 on the CPU).

The estimate is a plan's order of magnitude, not a schedule: what it is for is that a paper-scale run started
on a CPU by mistake (weeks) says so before it starts.
"""

from __future__ import annotations

import functools

import torch

from .methods.base import Method
from .models import architecture_of, build_generator

#: Achieved FLOP/s of one job: on a CPU the Langevin chain and the Inception both reach 0.03-0.04 TFLOP/s on the
#: 2-core AMD EPYC, with one thread as with two (a second thread did not speed up the full-MNIST batch);
#: on a GPU, the inference stage on an H100 in IEEE float32
FLOPS_PER_SECOND = {"cpu": 0.035e12, "cuda": 13e12}
#: The exact OT correction at n = 60,000 (CPU: benchmarks/results/ot_cpu.json; GPU: ot_gpu.json)
OT_SECONDS_AT_60K = {"cpu": 141.0, "cuda": 10.0}
INCEPTION_FLOPS = 5.7e9
#: bfloat16 autocast halves the Inception's CPU time (measured 0.145 -> 0.074 s per image on one thread)
BFLOAT16_SPEEDUP = 2.0
#: Python, torch and the package's imports, reading data and states: seconds per job
STARTUP_SECONDS = 4.0
DAY = 24 * 3600.0

#: (training, test) images of each prepared dataset
DATASET_IMAGES = {"mnist": (60_000, 10_000), "mnist5k": (4_500, 500), "svhn": (73_257, 26_032),
                  "celeba": (60_000, 10_000), "celeba128": (60_000, 10_000), "mnist64": (60_000, 10_000),
                  "mnist5k64": (4_500, 500), "mog25": (7_500, 0)}


@functools.lru_cache(maxsize=None)
def decoder_flops(architecture: str, latent_dim: int, upper_latent_dims: tuple[int, ...] = ()) -> float:
    """FLOPs of one image's forward pass through the run's generator (matrix products and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    generator = build_generator(architecture, latent_dim, list(upper_latent_dims)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        generator(torch.zeros(2, sum(upper_latent_dims) + latent_dim))
    return counter.get_total_flops() / 2


def training_images(settings: dict) -> int:
    """How many images a run trains on: its dataset's, restricted by classes, held-out digit and the cap."""
    n = DATASET_IMAGES[settings["dataset"]][0]
    if settings.get("classes"):
        n = n * len(settings["classes"]) // 10
    if settings.get("heldout_digit") is not None:
        n = int(n * 0.9 * 0.8)  # the anomaly protocol: nine digits, 80 % of them train
    return min(n, settings.get("train_images") or n)


def test_images(settings: dict, cap: int | None) -> int:
    n = DATASET_IMAGES[settings["dataset"]][1]
    return min(n, cap or n)


def ot_seconds(n: int, device: str) -> float:
    return OT_SECONDS_AT_60K[device] * (n / 60_000) ** 1.5


def evaluation_flops(method: Method, n: int, n_test: int, flops: float, fid_samples: int,
                     test_steps: int) -> float:
    """FLOPs of Table 1's evaluation of a run: the Inception pass over its samples, then the method's
    reconstructions (``Method.reconstruction_flops``)."""
    return fid_samples * INCEPTION_FLOPS + method.reconstruction_flops(n, n_test, flops, test_steps)


def job_seconds(rule: str, method: Method | None, stages: list[str], *, device: str, evaluation: dict,
                inception_speedup: float = 1.0) -> float:
    """Estimated seconds of one job: ``stages`` are the training stages it runs (a stage job: one; a block:
    every stage of its iterations), each costed by its run's ``method`` (``Method.stage_work``; None for jobs
    of no run)."""
    seconds = STARTUP_SECONDS
    if method is None:
        return seconds
    settings, rate = method.settings, FLOPS_PER_SECOND[device]
    n = training_images(settings)
    flops = decoder_flops(architecture_of(settings["dataset"]), settings["latent_dim"],
                          tuple(settings.get("upper_latent_dims", ())))
    for stage in stages:
        work, ot_size = method.stage_work(stage, n, flops)
        seconds += work / rate + (ot_seconds(ot_size, device) if ot_size else 0.0)
    if rule in ("evaluate", "evaluate_point"):
        n_test = test_images(settings, evaluation["test_images"])
        inception = evaluation["fid_samples"] * INCEPTION_FLOPS
        work = evaluation_flops(method, n, n_test, flops, evaluation["fid_samples"],
                                evaluation["test_langevin_steps"]) - inception + inception / inception_speedup
        seconds += work / rate
    return seconds


def reference_seconds(dataset: str, n_real: str, *, device: str, inception_speedup: float = 1.0) -> float:
    """Estimated seconds of the FID reference statistics: the Inception over ``n_real`` training images."""
    images = DATASET_IMAGES[dataset][0] if n_real == "all" else int(n_real)
    return STARTUP_SECONDS + images * INCEPTION_FLOPS / inception_speedup / FLOPS_PER_SECOND[device]


def describe(plan: dict[str, float], device: str, cores: int) -> tuple[float, str]:
    """(wall seconds, lines to print) of a plan {run or "other jobs": its jobs' seconds, times their threads on a
    CPU}. On a CPU the jobs share ``cores`` (perfect packing: a lower bound); on a GPU they take turns on it."""
    total = sum(plan.values())
    wall = total / max(1, cores) if device == "cpu" else total
    lines = [f"Estimated cost of this plan on the {device} (shortrun_ot.cost; docs/performance.md):"]
    for run, seconds in sorted(plan.items(), key=lambda item: -item[1]):
        lines.append(f"  {run:<40} {_duration(seconds)}")
    where = f"{cores} cores" if device == "cpu" else "one GPU"
    lines.append(f"  total {_duration(total)} of {'CPU-core' if device == 'cpu' else 'GPU'} time: about "
                 f"{_duration(wall)} on {where}")
    return wall, "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY:.1f} days"
