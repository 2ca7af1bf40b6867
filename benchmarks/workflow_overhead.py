"""Share of a training run's wall time spent outside the stages' arithmetic.

Reads every stage JSON of the run directories (``it*/infer.json``, ``correct.json``,
``learn.json``) and reports two shares:

- ``overhead_share``: 1 - (summed ``compute_seconds``) / (wall time of the Snakemake command
  that trained them, ``--wall``); valid when that command trained the runs one after the
  other. What is left is process start-up, loading and saving files, and Snakemake itself.
- ``job_overhead_share``: (start-up + loading + saving) / (start-up + stage seconds), from
  the JSONs alone (``startup_seconds`` is recorded once per job); valid also for runs that
  shared a machine with others, but blind to Snakemake's own scheduling time.

    /usr/bin/time -f %e snakemake --cores 16 results/gpu/runs/ours/it0100/learn.pt
    python benchmarks/workflow_overhead.py --wall 312.4 results/gpu/runs/ours
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shortrun_ot.io import save_json


def summarise(run_dirs: list[Path], wall: float | None) -> dict:
    reports = [json.loads(p.read_text()) for d in run_dirs for p in sorted(d.glob("it*/*.json"))
               if p.name in ("infer.json", "correct.json", "learn.json")]
    if not reports:
        raise SystemExit(f"no stage JSONs under {', '.join(map(str, run_dirs))}")
    compute = sum(r["compute_seconds"] for r in reports)
    startups = [r["startup_seconds"] for r in reports if "startup_seconds" in r]
    stage_seconds = sum(r["seconds"] for r in reports)
    return {
        "runs": [str(d) for d in run_dirs], "stages": len(reports), "processes": len(startups),
        "wall_seconds": wall, "compute_seconds": compute, "startup_seconds": sum(startups),
        "load_save_seconds": stage_seconds - compute,
        "overhead_share": None if wall is None else 1 - compute / wall,
        "job_overhead_share": 1 - compute / (sum(startups) + stage_seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="results/<...>/runs/<run>")
    parser.add_argument("--wall", type=float, default=None, help="wall seconds of the Snakemake command")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()
    summary = summarise(args.run_dirs, args.wall)
    for key, value in summary.items():
        print(f"{key:>18}: {value:.3f}" if isinstance(value, float) else f"{key:>18}: {value}")
    if args.json:
        save_json(summary, args.json)


if __name__ == "__main__":
    main()
