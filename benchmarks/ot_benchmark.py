"""Benchmark of the OT correction solver (``shortrun_ot.ot.assign``) against exact and POT solvers.

Each size draws sources 0.5 + 0.7 N(0, I) and targets N(0, I) in d dimensions
and runs, in the same process:

- ``assign``: the default solver (on a GPU: Alg. 2 descent then the certified
  sparse repair; on the CPU: the repair alone);
- ``alg2+repair``: ``assign(max_iter=100)``, the GPU default, run on the CPU;
- ``alg2-drop``: ``assign(repair=False)``, the paper's Alg. 2 as published
  (leftover points dropped, cost over the matched pairs only);
- ``lsa``: ``scipy.optimize.linear_sum_assignment`` on the dense cost matrix (exact);
- ``pot-emd``: ``ot.emd`` (network simplex, exact);
- ``pot-sinkhorn``: ``ot.sinkhorn`` (reg = 0.05 x mean cost) rounded greedily to a permutation.

``--run-off F`` moves a fraction F of the sources out to norm ``--run-off-norm`` (100), where chains that
ran off leave their latents (an untrained generator): the solver's worst case (docs/performance.md).

It prints one table and, with ``--json``, writes the rows and the machine
description. ``cost/lb`` divides by the certified lower bound of ``assign`` for
every method. Examples::

    python benchmarks/ot_benchmark.py --no-exact-above 10000 --json benchmarks/results/ot_cpu.json
    python benchmarks/ot_benchmark.py --device cuda --dim 64 --json benchmarks/results/ot_gpu.json
    python benchmarks/ot_benchmark.py --sizes 10000 20000 --run-off 0.03 --no-exact-above 0 --no-pot-above 0
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from shortrun_ot.io import save_json
from shortrun_ot.ot import assign

from reporting import machine_description, print_table  # benchmarks/ (the script's folder is on sys.path)

SINKHORN_REG = 0.05
DEFAULT_SIZES = {"cpu": [1000, 2000, 5000, 10000], "cuda": [1000, 10000, 60000, 73257]}
COLUMNS = [  # header, row key, width, format
    ("n", "n", 6, ""),
    ("d", "d", 3, ""),
    ("device", "device", 6, ""),
    ("method", "method", 12, ""),
    ("seconds", "seconds", 8, ".2f"),
    ("iters", "iterations", 5, ""),
    ("before_repair", "unmatched_before_repair", 13, ""),
    ("unmatched", "unmatched", 9, ""),
    ("cost", "cost", 9, ".5f"),
    ("cost/opt", "cost_over_optimum", 9, ".6f"),
    ("cost/lb", "cost_over_lower_bound", 9, ".6f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="default: 1,000 to 10,000 on cpu, up to 73,257 on cuda")
    parser.add_argument("--dim", type=int, default=30)
    parser.add_argument("--device", default="cpu", help="device for assign; the reference solvers always use the CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-exact-above", type=int, default=5000, help="skip linear_sum_assignment above this n")
    parser.add_argument("--no-pot-above", type=int, default=5000, help="skip ot.emd and ot.sinkhorn above this n")
    parser.add_argument("--run-off", type=float, default=0.0, help="fraction of the sources moved out to norm "
                        "--run-off-norm, as the latents of chains that ran off")
    parser.add_argument("--run-off-norm", type=float, default=100.0)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    device = torch.device(args.device)
    args.sizes = args.sizes or DEFAULT_SIZES[device.type]
    _warm_up(args.dim, device)
    rows = []
    for n in args.sizes:
        generator = torch.Generator().manual_seed(args.seed + n)
        source = 0.5 + 0.7 * torch.randn(n, args.dim, generator=generator)
        target = torch.randn(n, args.dim, generator=generator)
        far = torch.randperm(n, generator=generator)[: int(args.run_off * n)]
        source[far] *= args.run_off_norm / source[far].norm(dim=1, keepdim=True)
        rows += _benchmark_size(source, target, device, args)
        print(f"n = {n} done", file=sys.stderr, flush=True)
    print_table(rows, COLUMNS)

    if args.json:
        save_json({"machine": machine_description(device), "arguments": vars(args), "rows": rows}, args.json)
        print(f"wrote {args.json}")


def _benchmark_size(source, target, device, args) -> list[dict]:
    n, d = source.shape
    variants = {"assign": {}, "alg2-drop": {"repair": False, "seed": 0}}
    if device.type == "cpu":  # elsewhere the default already runs the descent
        variants["alg2+repair"] = {"max_iter": 100}
    rows = []
    for method, kwargs in variants.items():
        result = assign(source.to(device), target.to(device), **kwargs)
        rows.append({"method": method, "device": str(device), **result.summary()})

    x, y = source.double().numpy(), target.double().numpy()
    if n <= max(args.no_exact_above, args.no_pot_above):
        started = time.perf_counter()
        cost_matrix = _squared_distances(x, y)
        matrix_seconds = time.perf_counter() - started
    if n <= args.no_exact_above:
        started = time.perf_counter()
        _, permutation = linear_sum_assignment(cost_matrix)
        rows.append(_reference_row("lsa", cost_matrix, permutation, matrix_seconds + time.perf_counter() - started))
    if n <= args.no_pot_above:
        rows += _pot_rows(cost_matrix, matrix_seconds)

    exact = next((row["cost"] for row in rows if row["method"] == "lsa"), None)
    certified_bound = rows[0]["lower_bound"]  # the lower bound of ``assign`` holds for every method
    for row in rows:
        row.update(n=n, d=d, cost_over_lower_bound=row["cost"] / certified_bound)
        row["cost_over_optimum"] = row["cost"] / exact if exact else None
    return rows


def _pot_rows(cost_matrix: np.ndarray, matrix_seconds: float) -> list[dict]:
    import ot

    n = len(cost_matrix)
    marginal = np.full(n, 1.0 / n)
    started = time.perf_counter()
    plan = ot.emd(marginal, marginal, cost_matrix, numItermax=10**9)
    emd_row = _reference_row("pot-emd", cost_matrix, plan.argmax(1), matrix_seconds + time.perf_counter() - started)

    started = time.perf_counter()
    scale = cost_matrix.mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-convergence shows up in the cost column
        plan = ot.sinkhorn(marginal, marginal, cost_matrix / scale, SINKHORN_REG, numItermax=1000, stopThr=1e-6)
    permutation = _greedy_rounding(plan)
    seconds = matrix_seconds + time.perf_counter() - started
    return [emd_row, _reference_row("pot-sinkhorn", cost_matrix, permutation, seconds)]


def _greedy_rounding(plan: np.ndarray) -> np.ndarray:
    """Permutation from a transport plan: the most confident rows first take their heaviest free column."""
    permutation = np.empty(len(plan), dtype=np.int64)
    free = np.ones(len(plan), dtype=bool)
    for row in np.argsort(-plan.max(1)):
        permutation[row] = np.argmax(np.where(free, plan[row], -np.inf))
        free[permutation[row]] = False
    return permutation


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T, 0.0)


def _reference_row(method: str, cost_matrix: np.ndarray, permutation: np.ndarray, seconds: float) -> dict:
    n = len(cost_matrix)
    return {
        "method": method,
        "device": "cpu",
        "cost": float(cost_matrix[np.arange(n), permutation].mean()),
        "lower_bound": None,
        "unmatched": n - len(np.unique(permutation)),
        "seconds": seconds,
    }


def _warm_up(dim: int, device: torch.device) -> None:
    """Pay one-off start-up costs (CUDA context, kernels) outside the timings."""
    points = torch.randn(200, dim, device=device)
    assign(points, points.flip(0))


if __name__ == "__main__":
    main()
