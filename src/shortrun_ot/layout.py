"""Where a run's files live: ``<run_dir>/it<t>/<stage>.pt`` (+ ``.pt.json`` manifest, ``.json`` report).

One naming convention for the Snakemake rules (``workflow/rules/common.smk``) and for the block
jobs that run several iterations in one process (``pipeline.train_block``); it knows nothing of
any method beyond what the method's schedule (``Method.stages``, ``Method.inputs``) says.
"""

from __future__ import annotations

from pathlib import Path

from .io import manifest_path
from .methods.base import Method, StageRef


def iteration_dir(run_dir: str | Path, t: int) -> Path:
    """Iteration t's directory: it0000, it0001, ..."""
    return Path(run_dir) / f"it{int(t):04d}"


def iteration_of(path: str | Path) -> int:
    """The iteration t of a file under ``it<t>/`` (the inverse of ``iteration_dir``)."""
    return int(Path(path).parent.name.removeprefix("it"))


def state_file(run_dir: str | Path, ref: StageRef) -> Path:
    """The state a stage writes: ``it<t>/<stage>.pt``."""
    return iteration_dir(run_dir, ref.iteration) / f"{ref.stage}.pt"


def report_file(run_dir: str | Path, ref: StageRef) -> Path:
    """What a stage measured: ``it<t>/<stage>.json``."""
    return iteration_dir(run_dir, ref.iteration) / f"{ref.stage}.json"


def report_of(state: str | Path) -> Path:
    """The report beside a state file (``infer.pt`` -> ``infer.json``)."""
    return Path(state).with_suffix(".json")


def stage_files(run_dir: str | Path, ref: StageRef) -> list[Path]:
    """The three files one stage writes: state, its manifest, its report."""
    state = state_file(run_dir, ref)
    return [state, manifest_path(state), report_file(run_dir, ref)]


def iteration_refs(method: Method, t: int) -> list[StageRef]:
    return [StageRef(t, stage) for stage in method.stages(t)]


def input_files(run_dir: str | Path, method: Method, stage: str, t: int) -> dict[str, Path]:
    """Role -> state file that ``stage`` of iteration t reads."""
    return {role: state_file(run_dir, ref) for role, ref in method.inputs(stage, t).items()}


def reports(run_dir: str | Path, method: Method, last: int) -> list[Path]:
    """The report of every stage of iterations 1..last."""
    return [report_file(run_dir, ref) for t in range(1, last + 1) for ref in iteration_refs(method, t)]


def block_outputs(run_dir: str | Path, method: Method, first: int, last: int,
                  kept: set[int] | None = None) -> list[Path]:
    """Every file iterations first..last write, in stage order; with ``kept`` (``kept_iterations``), the
    iterations not in it write their reports only."""
    return [path for t in range(first, last + 1) for ref in iteration_refs(method, t)
            for path in (stage_files(run_dir, ref) if kept is None or t in kept else [report_file(run_dir, ref)])]


def kept_iterations(method: Method, blocks: list[tuple[int, int]], every: int) -> set[int]:
    """The iterations whose state files a run of block jobs ``blocks`` ((first, last), ...) writes when it
    keeps every ``every``-th (``compute.keep_states_every``): iteration 0, the multiples of ``every``, each
    block's last iteration (where the next block, or a resumed run, starts), every iteration whose states
    a later block reads, and those of the trained model (the last iteration's ``"end"`` point)."""
    if not blocks:
        return {0}
    last = blocks[-1][1]
    kept = {0, *range(every, last + 1, every), *(end for _, end in blocks)}
    kept |= {ref.iteration for ref in method.evaluation_points(last)["end"].values()}
    for first, end in blocks:
        kept |= {ref.iteration for t in range(first, end + 1) for stage in method.stages(t)
                 for ref in method.inputs(stage, t).values() if ref.iteration < first}
    return kept


def block_inputs(run_dir: str | Path, method: Method, first: int, last: int) -> list[Path]:
    """The state files from before ``first`` that the stages of iterations first..last read."""
    needed = {ref for t in range(first, last + 1) for stage in method.stages(t)
              for ref in method.inputs(stage, t).values() if ref.iteration < first}
    return [state_file(run_dir, ref) for ref in sorted(needed, key=lambda r: (r.iteration, r.stage))]


def final_dir(run_dir: str | Path) -> Path:
    """``<run_dir>/final``: the trained model under fixed names (what DVC tracks and evaluation reads)."""
    return Path(run_dir) / "final"


def final_files(run_dir: str | Path, method: Method) -> dict[str, Path]:
    """Role -> ``final/<role>.pt`` of the model after the last iteration."""
    roles = method.evaluation_points(method.iterations)["end"]
    return {role: final_dir(run_dir) / f"{role}.pt" for role in roles}


def point_files(run_dir: str | Path, method: Method, t: int, point: str) -> dict[str, Path]:
    """Role -> state file of evaluation point ``point`` of iteration t."""
    points = method.evaluation_points(t)
    if point not in points:
        raise ValueError(f"iteration {t} has no evaluation point {point!r} (it has {', '.join(points)})")
    return {role: state_file(run_dir, ref) for role, ref in points[point].items()}
