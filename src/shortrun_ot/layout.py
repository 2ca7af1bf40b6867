"""Where a run's files live: ``<run_dir>/it<t>/{inferred,corrected,checkpoint}.pt`` and stage JSONs.

One naming convention for the Snakemake rules (``workflow/rules/common.smk``) and for the
stages that run a block of iterations in one process (``pipeline.train_block``).
"""

from __future__ import annotations

from pathlib import Path

from .config import is_correction_iteration


def iteration_dir(run_dir: str | Path, t: int) -> Path:
    """Iteration t's directory: it0000, it0001, ..."""
    return Path(run_dir) / f"it{int(t):04d}"


def checkpoint_of(run_dir: str | Path, t: int) -> Path:
    return iteration_dir(run_dir, t) / "checkpoint.pt"


def latents_after(run_dir: str | Path, settings: dict, t: int) -> Path:
    """The latents iteration t hands on: corrected on correction iterations, else inferred."""
    t = int(t)
    if t == 0:
        return iteration_dir(run_dir, 0) / "latents.pt"
    name = "corrected" if is_correction_iteration(settings, t) else "inferred"
    return iteration_dir(run_dir, t) / f"{name}.pt"


def prior_of(run_dir: str | Path) -> Path:
    """The run's fixed prior sample {z_j} of Alg. 1 (the OT targets)."""
    return Path(run_dir) / "prior.pt"


def stages_of(settings: dict, t: int) -> list[str]:
    """The stages iteration t >= 1 runs (Alg. 1): correction only when t % L == 0 and alpha > 0."""
    return ["infer", "correct", "learn"] if is_correction_iteration(settings, t) else ["infer", "learn"]


def stage_outputs(run_dir: str | Path, stage: str, t: int) -> dict[str, Path]:
    """The files one stage of iteration t writes (the checkpoint's manifest included)."""
    directory = iteration_dir(run_dir, t)
    if stage == "infer":
        return {"latents": directory / "inferred.pt", "stats": directory / "infer.json"}
    if stage == "correct":
        return {"latents": directory / "corrected.pt", "stats": directory / "correct.json"}
    if stage == "learn":
        return {"checkpoint": directory / "checkpoint.pt", "manifest": directory / "checkpoint.pt.json",
                "stats": directory / "learn.json"}
    raise ValueError(f"unknown stage {stage!r}")


def iteration_outputs(run_dir: str | Path, settings: dict, t: int) -> list[Path]:
    """Every file iteration t >= 1 writes, in stage order."""
    return [path for stage in stages_of(settings, t) for path in stage_outputs(run_dir, stage, t).values()]


def previous_correction(run_dir: str | Path, settings: dict, t: int) -> Path | None:
    """The correction before the one at t (its dual vector h warm-starts Alg. 2), if any."""
    before = t - settings["correction"]["every"]
    return iteration_dir(run_dir, before) / "corrected.pt" if before > 0 else None
