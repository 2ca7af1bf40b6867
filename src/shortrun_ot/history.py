"""Per-iteration training history of one run: a CSV with one row per iteration.

The rows come from the stage reports the workflow writes under ``it<t>/`` (``<stage>.json``),
whatever the method: column ``<stage>.<key>`` holds every number a stage reported (for the
short-run method e.g. ``infer.latent_fd``, ``correct.cost``, ``learn.loss_last_pass``), empty in
iterations without that stage. The CSV is what ``dvc plots show`` draws and the report lists.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable

from .io import load_json, save_text

SKIPPED = {"iteration", "threads"}  # reported by every stage, not a measurement


def _number(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def history_rows(stats_files: Iterable[str | Path]) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows): one row per iteration from the given stage reports (any order)."""
    by_iteration: dict[int, dict[str, dict]] = {}
    columns: dict[str, None] = {}
    for path in map(Path, stats_files):
        stats = load_json(path, "stage report")
        if not isinstance(stats, dict) or "iteration" not in stats or "stage" not in stats:
            raise ValueError(f"stage report {path} is not a JSON object with 'stage' and 'iteration'")
        stages = by_iteration.setdefault(int(stats["iteration"]), {})
        if stats["stage"] in stages:
            raise ValueError(f"{path}: a second {stats['stage']} report for iteration {stats['iteration']}")
        stages[stats["stage"]] = stats
        for key, value in stats.items():
            if key not in SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool):
                columns[f"{stats['stage']}.{key}"] = None
    header = ["iteration", "stages", *columns]
    rows = []
    for t in sorted(by_iteration):
        stages = by_iteration[t]
        row = {"iteration": str(t), "stages": " ".join(stages)}
        for column in columns:
            stage, key = column.split(".", 1)
            row[column] = _number(stages.get(stage, {}).get(key))
        rows.append(row)
    return header, rows


def history_csv(header: list[str], rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_history(stats_files: Iterable[str | Path], out: str | Path) -> list[dict[str, str]]:
    """Write the history CSV of the given stage reports to ``out`` (atomically); return its rows."""
    header, rows = history_rows(stats_files)
    if not rows:
        raise ValueError("no stage reports given")
    save_text(history_csv(header, rows), out)
    return rows
