"""Summary of the mechanism study (docs/mechanism.md): does the OT correction last, and at what cost?

Reads, for every run directory given, ``config.json``, ``history.csv`` and, where present,
``metrics.json`` (Table 1 metrics) and ``chain_stability.json``, and prints one Markdown row per
run. Columns:

- ``fd``: Frechet distance of the Gaussian fit of the latents inferred in the last iteration to
  N(0, I) (``infer.latent_fd``); ``norm``: their mean norm (the prior's is about 5.4 for d = 30);
- ``kept``: per correction but the last, the share of its reduction of that distance which the
  next inference keeps, (fd before - fd of the next inference) / (fd before - fd after):
  1 = the correction lasts, 0 = the next inference undoes it, < 0 = the latents end farther away
  (left out where the correction cut the distance by less than 10%: the latents were at the prior);
- ``mse``/``fid``/``ot``: Table 1's MSE (train, test), FID and OT cost to an independent prior
  sample (its two-sample floor beside it), when the run was evaluated;
- ``growth``: chain stability at the run's own step size (median distance of two chains after K
  steps over the initial distance; > 1 = chaotic), when measured.

    python benchmarks/mechanism_study.py results/quick/runs/ours results/quick/runs/abp ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from shortrun_ot.tables import markdown


def correction_kept(history: pd.DataFrame) -> list[float]:
    """Share of each correction's gain in distance to the prior that the next inference keeps."""
    kept = []
    if "correct.latent_fd" not in history:
        return kept
    by_t = history.set_index("iteration")
    for t, row in by_t.dropna(subset=["correct.latent_fd"]).iterrows():
        if t + 1 in by_t.index:
            gain = row["correct.latent_fd"] - row["correct.latent_fd_after"]
            if gain > 0.1 * row["correct.latent_fd"]:  # else there was little to keep: no share
                kept.append((row["correct.latent_fd"] - by_t.loc[t + 1, "infer.latent_fd"]) / gain)
    return kept


def summarise(run_dir: Path) -> dict:
    settings = json.loads((run_dir / "config.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    last = history[history["iteration"] > 0].iloc[-1]
    row = {
        "run": run_dir.name, "s": settings["langevin"]["step_size"], "K": settings["langevin"]["steps"],
        "persistent": settings["langevin"]["persistent"], "alpha": settings["correction"]["alpha"],
        "L": settings["correction"]["every"], "batch": settings["batch_size"], "seed": settings["seed"], "T": int(last["iteration"]),
        "fd": last["infer.latent_fd"], "norm": last["infer.latent_norm"],
        "kept": " ".join(f"{k:.2f}" for k in correction_kept(history)),
    }
    if (run_dir / "metrics.json").is_file():
        m = json.loads((run_dir / "metrics.json").read_text())
        row.update({"mse_train": m["mse_train"], "mse_test": m["mse_test"], "fid": m["fid"],
                    "ot": m["ot_cost"], "ot_floor": m["ot_cost_prior_floor"]})
    if (run_dir / "chain_stability.json").is_file():
        rows = json.loads((run_dir / "chain_stability.json").read_text())["rows"]
        own = [r["growth"] for r in rows if r["step_size"] == settings["langevin"]["step_size"]]
        row["growth"] = own[0] if own else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (results/quick/runs/<run>)")
    table = pd.DataFrame([summarise(run) for run in parser.parse_args().runs])
    print(markdown(table, "Mechanism study (benchmarks/mechanism_study.py)"))


if __name__ == "__main__":
    main()
