"""What the benchmark scripts print and record (importable: the scripts' folder is on sys.path)."""

from __future__ import annotations

import os
import platform
import time

import torch


def print_table(rows: list[dict], columns: list[tuple[str, str, int, str]]) -> None:
    """One line per row; ``columns`` are (header, row key, width, format spec); '-' where a value is missing."""
    print("  ".join(f"{header:>{width}}" for header, _, width, _ in columns))
    for row in rows:
        print("  ".join(f"{'-' if row.get(key) is None else format(row[key], spec):>{width}}"
                        for _, key, width, spec in columns))


def machine_description(device: torch.device) -> dict:
    """The machine, software and date behind a benchmark's JSON rows."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
