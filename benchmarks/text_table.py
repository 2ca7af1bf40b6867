"""The plain-text table the benchmark scripts print (importable: the scripts' folder is on sys.path)."""

from __future__ import annotations


def print_table(rows: list[dict], columns: list[tuple[str, str, int, str]]) -> None:
    """One line per row; ``columns`` are (header, row key, width, format spec); '-' where a value is missing."""
    print("  ".join(f"{header:>{width}}" for header, _, width, _ in columns))
    for row in rows:
        print("  ".join(f"{'-' if row.get(key) is None else format(row[key], spec):>{width}}"
                        for _, key, width, spec in columns))
