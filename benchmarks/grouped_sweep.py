"""Timing of one inference sweep (K Langevin steps for n images, Eq. 7) with several batches at once.

The sweep runs ``shortrun_ot.langevin.short_run_inference`` as the inference stage does (training-mode
generator, batch-norm batch statistics, running statistics frozen) on the MNIST generator of Table 7
(Xavier-normal weights, d = 30) and n synthetic images, once per value of ``--at-once``
(``batches_at_once``: 1 is one batch after another), the values taking turns for ``--repeats`` rounds;
the fastest round of each counts (on a shared machine the others measure the neighbours). ``sweep_K50``
extrapolates to the paper's K = 50: a sweep of K steps costs K Langevin steps (a forward and a backward
pass each) and one closing evaluation of log p (a forward pass, about half a step), so
sweep_K50 = seconds * 50.5 / (K + 0.5). ``max|dz|`` compares each value's latents with those of the first
value (0: bit for bit). Example::

    python benchmarks/grouped_sweep.py --n 60000 --batch-size 2000 --steps 3 --at-once 1 10
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from shortrun_ot.io import save_json
from shortrun_ot.langevin import short_run_inference
from shortrun_ot.models import build_generator, frozen_batchnorm_statistics

from reporting import machine_description, print_table  # benchmarks/ (the script's folder is on sys.path)

PAPER_STEPS = 50
COLUMNS = [  # header, row key, width, format
    ("n", "n", 6, ""),
    ("batch", "batch_size", 5, ""),
    ("at_once", "batches_at_once", 7, ""),
    ("K", "steps", 3, ""),
    ("device", "device", 6, ""),
    ("seconds", "seconds", 8, ".1f"),
    ("sweep_K50", "sweep_seconds_k50", 9, ".0f"),
    ("speed-up", "speedup", 8, ".2f"),
    ("max|dz|", "max_abs_diff", 8, ".1e"),
]


def sweep(generator, images, z0, *, steps, batch_size, batches_at_once, device):
    """(latents, seconds) of one sweep of ``steps`` Langevin steps, noise from a fixed seed."""
    rng = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    with frozen_batchnorm_statistics(generator):
        z, _ = short_run_inference(generator, images, z0, steps=steps, step_size=0.1, sigma=0.3, batch_size=batch_size,
                                   rng=rng, device=device, batches_at_once=batches_at_once)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return z, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=60000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=3, help="Langevin steps K of the timed sweeps")
    parser.add_argument("--at-once", type=int, nargs="+", default=[1, 10], help="values of batches_at_once")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the values; the fastest counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the rows and the machine description here")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    generator = build_generator("mnist", 30).to(device).train()
    data = torch.Generator().manual_seed(0)
    images = torch.rand(args.n, 1, 28, 28, generator=data) * 2 - 1
    z0 = torch.randn(args.n, 30, generator=data)
    sweep(generator, images[: args.batch_size], z0[: args.batch_size], steps=1, batch_size=args.batch_size,
          batches_at_once=1, device=device)  # warm-up
    seconds, latents = {}, {}
    for _ in range(args.repeats):
        for at_once in args.at_once:
            latents[at_once], took = sweep(generator, images, z0, steps=args.steps, batch_size=args.batch_size,
                                           batches_at_once=at_once, device=device)
            seconds.setdefault(at_once, []).append(took)
            print(f"batches_at_once {at_once}: {took:.1f} s", flush=True)
    first = args.at_once[0]
    rows = [{"n": args.n, "batch_size": args.batch_size, "batches_at_once": at_once, "steps": args.steps,
             "device": device.type, "seconds": min(seconds[at_once]), "rounds": seconds[at_once],
             "sweep_seconds_k50": min(seconds[at_once]) * (PAPER_STEPS + 0.5) / (args.steps + 0.5),
             "speedup": min(seconds[first]) / min(seconds[at_once]),
             "max_abs_diff": float((latents[at_once] - latents[first]).abs().max())} for at_once in args.at_once]
    print_table(rows, COLUMNS)
    if args.json:
        save_json({"machine": machine_description(device), "load_average": os.getloadavg(), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
