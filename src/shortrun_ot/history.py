"""Per-iteration training history of one run: a CSV with one row per iteration.

The rows come from the stage JSONs that the workflow writes under ``it{t}/`` (``infer.json``,
``correct.json`` on correction iterations, ``learn.json``). The CSV is what ``dvc plots show``
draws (training loss, log joint, OT cost) and what the Snakemake report lists.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable

from .io import load_json, save_text

# column -> (stage, key in that stage's JSON)
COLUMNS: dict[str, tuple[str, str]] = {
    "log_joint_start": ("infer", "log_joint_start"),
    "log_joint_end": ("infer", "log_joint_end"),
    "latent_norm": ("infer", "latent_norm"),
    "infer_seconds": ("infer", "seconds"),
    "ot_cost": ("correct", "cost"),
    "ot_lower_bound": ("correct", "lower_bound"),
    "ot_unmatched": ("correct", "unmatched"),
    "correct_seconds": ("correct", "seconds"),
    "loss_first_pass": ("learn", "loss_first_pass"),
    "loss_last_pass": ("learn", "loss_last_pass"),
    "grad_norm": ("learn", "grad_norm"),
    "learn_seconds": ("learn", "seconds"),
}
HEADER = ["iteration", "corrected", *COLUMNS]
STAGES = ("infer", "correct", "learn")


def _load(path: Path) -> dict:
    stats = load_json(path, "stage statistics file")
    if not isinstance(stats, dict):
        raise ValueError(f"stage statistics {path} are not a JSON object")
    return stats


def _stage_of(path: Path, stats: dict) -> str:
    stage = stats.get("stage") or path.stem
    if stage not in STAGES:
        raise ValueError(f"{path}: unknown stage {stage!r} (expected one of {', '.join(STAGES)})")
    return stage


def _number(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def history_rows(stats_files: Iterable[str | Path]) -> list[dict[str, str]]:
    """One row per iteration from the given stage JSONs (any order).

    Every iteration needs an ``infer`` and a ``learn`` record; ``correct`` is optional (only
    correction iterations have one) and leaves the OT columns empty when absent.
    """
    by_iteration: dict[int, dict[str, dict]] = {}
    for path in map(Path, stats_files):
        stats = _load(path)
        stage = _stage_of(path, stats)
        if "iteration" not in stats:
            raise ValueError(f"{path}: no 'iteration' field")
        stages = by_iteration.setdefault(int(stats["iteration"]), {})
        if stage in stages:
            raise ValueError(f"{path}: a second {stage} record for iteration {stats['iteration']}")
        stages[stage] = stats
    rows = []
    for t in sorted(by_iteration):
        stages = by_iteration[t]
        missing = [s for s in ("infer", "learn") if s not in stages]
        if missing:
            raise ValueError(f"iteration {t}: no {' or '.join(missing)} statistics among the inputs")
        row = {"iteration": str(t), "corrected": "1" if "correct" in stages else "0"}
        for column, (stage, key) in COLUMNS.items():
            row[column] = _number(stages.get(stage, {}).get(key))
        rows.append(row)
    return rows


def history_csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_history(stats_files: Iterable[str | Path], out: str | Path) -> list[dict[str, str]]:
    """Write the history CSV of the given stage JSONs to ``out`` (atomically); return its rows."""
    rows = history_rows(stats_files)
    if not rows:
        raise ValueError("no stage statistics given")
    save_text(history_csv(rows), out)
    return rows
