"""Running a method's stages on files: one stage per process, or a block of iterations in one process.

A stage reads the state files its method names (``Method.inputs``), each checked against its
SHA-256 manifest before it is unpickled, computes, and writes its state atomically with a new
manifest, then its report (``<stage>.json``): what the method measured, plus ``method``,
``device``, ``compute_seconds`` (the stage's arithmetic), ``seconds`` (loading and saving
included) and, for a process's first stage, ``startup_seconds`` (process start to its first
batch: imports, CUDA start-up, loading).

``train_block`` runs iterations first..last in one process, keeping the states in memory, and
writes the same files, bit for bit (docs/performance.md).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import psutil
import torch

from . import data, layout
from .config import method_class, stage_rng
from .io import load_tensors, manifest_path, save_json, save_tensors, verify_manifest, write_manifest
from .methods.base import EvaluationProtocol, Method, StageContext, StageRef, StateFile, TrainedModel
from .models import architecture_of


def process_age() -> float:
    """Seconds since this process started (interpreter start-up and imports included)."""
    return time.time() - psutil.Process().create_time()


def build_method(settings: dict) -> Method:
    return method_class(settings["method"])(settings)


def select_images(images: torch.Tensor, labels: torch.Tensor | None, settings: dict, limit: int | None):
    """The images of the run's ``classes`` (all when null), then the first ``limit`` of them."""
    if settings["classes"] is not None:
        if labels is None:
            raise ValueError("config key 'classes': this dataset file has no labels to select classes by")
        keep = torch.isin(labels, torch.tensor(settings["classes"]))
        images, labels = images[keep], labels[keep]
    if limit is not None:
        if limit > len(images):
            raise ValueError(f"config key 'train_images': {limit} exceeds the {len(images)} images available")
        images = images[:limit]
        labels = labels[:limit] if labels is not None else None
    return images, labels


def load_training_images(path: str | Path, settings: dict, with_labels: bool = False):
    """The run's training images on the [-1, 1] scale (its classes, the first ``train_images`` of them)."""
    prepared = data.read_prepared(path)
    images = data.to_model_scale(prepared["train_images"])
    images, labels = select_images(images, prepared.get("train_labels"), settings, settings["train_images"])
    return (images, labels) if with_labels else images


def occlusion_of(settings: dict, images: torch.Tensor) -> torch.Tensor | None:
    """The fixed mask (1 observed, 0 missing) of each training image of a run with ``occlusion.missing`` > 0,
    drawn once from the run's seed (the same in every stage and iteration); None for complete images."""
    missing = settings.get("occlusion", {}).get("missing", 0.0)
    if not missing:
        return None
    return data.occlusion_mask(tuple(images.shape), missing, stage_rng(settings["seed"], 0, "occlusion"))


def training_context(path: str | Path, settings: dict, device: torch.device, progress: bool = False,
                     cuda_graph: bool = False, batches_at_once: int = 1) -> StageContext:
    """What a stage trains on: the run's training images, with their missing pixels set to 0 and their
    masks when the run learns from occluded images (so that no stage can see a missing pixel)."""
    images = load_training_images(path, settings)
    mask = occlusion_of(settings, images)
    if mask is not None:
        images = images * mask
    return StageContext(images, device, progress, cuda_graph, mask, batches_at_once)


def load_test_images(path: str | Path, settings: dict, limit: int | None = None):
    """The run's test images ([-1, 1]) and their labels (or anomaly flags), at most ``limit`` of them
    (``evaluation.test_images`` is a cap: a run on a few classes may have fewer)."""
    prepared = data.read_prepared(path)
    labels = prepared.get("test_is_anomaly", prepared.get("test_labels"))
    images = data.to_model_scale(prepared["test_images"])
    if settings["classes"] is not None and "test_is_anomaly" in prepared:
        raise ValueError("config key 'classes' cannot be combined with the anomaly protocol ('heldout_digit')")
    images, labels = select_images(images, labels, settings, None)
    return images[:limit], (labels[:limit] if labels is not None else None)


def _identity(settings: dict) -> tuple:
    return settings["method"], architecture_of(settings["dataset"]), settings["latent_dim"]


def load_state(path: str | Path, settings: dict) -> StateFile:
    """A state file, checked against its manifest and against the run's method, architecture and latent size."""
    remedy = (f"delete {path} and {manifest_path(path)} and rerun the same Snakemake command "
              "(it recomputes that stage and the ones after it)")
    manifest = verify_manifest(path, "state file", remedy)
    found = (manifest.get("method"), manifest.get("architecture"), manifest.get("latent_dim"))
    if found != _identity(settings):
        raise ValueError(
            f"state file {path} holds method/architecture/latent_dim {found}, but the configuration asks for "
            f"{_identity(settings)}; delete the run's directory or fix 'method'/'dataset'/'latent_dim'"
        )
    state = load_tensors(path, "state file")
    if not isinstance(state, dict):
        raise ValueError(f"state file {path} is not a state of this workflow; {remedy}")
    return StateFile(state, path)


def save_state(state: dict, path: str | Path, settings: dict, ref: StageRef) -> None:
    """Write a state atomically, then its manifest (SHA-256, size, what wrote it)."""
    method, architecture, latent_dim = _identity(settings)
    save_tensors(state, path)
    write_manifest(path, method=method, architecture=architecture, latent_dim=latent_dim,
                   iteration=ref.iteration, stage=ref.stage)


def _save_report(report: dict, ref: StageRef, settings: dict, ctx: StageContext, started: float, compute: float,
                 startup: float | None, path) -> dict:
    report = {"stage": ref.stage, "iteration": ref.iteration, "method": settings["method"], **report,
              "images": len(ctx.images), "device": str(ctx.device), "threads": torch.get_num_threads(), "compute_seconds": compute,
              "seconds": time.perf_counter() - started}
    if startup is not None:
        report["startup_seconds"] = startup
    save_json(report, path)
    return report


def run_stage(settings: dict, ref: StageRef, input_paths: dict[str, str | Path], data_path, state_out,
              device: torch.device, progress: bool = False, cuda_graph: bool = False,
              batches_at_once: int = 1) -> dict:
    """One stage in this process: load its inputs, compute, write its state, manifest and report."""
    started = time.perf_counter()
    method = build_method(settings)
    expected = set(method.inputs(ref.stage, ref.iteration)) if ref.stage in method.stages(ref.iteration) else set()
    if set(input_paths) != expected:
        raise ValueError(f"stage {ref.stage} of iteration {ref.iteration} reads {sorted(expected)}, "
                         f"got {sorted(input_paths)}")
    ctx = training_context(data_path, settings, device, progress, cuda_graph, batches_at_once)
    inputs = {role: load_state(path, settings) for role, path in input_paths.items()}
    startup = process_age()
    compute_start = time.perf_counter()
    state, report = method.run(ref.stage, ref.iteration, inputs, ctx)
    compute = time.perf_counter() - compute_start
    save_state(state, state_out, settings, ref)
    return _save_report(report, ref, settings, ctx, started, compute, startup, layout.report_of(state_out))


def train_block(settings: dict, run_dir, first: int, last: int, data_path, device: torch.device,
                progress: bool = False, cuda_graph: bool = False, batches_at_once: int = 1,
                keep: set[int] | None = None) -> list[dict]:
    """Iterations first..last in one process, writing every stage's files as the per-stage jobs do.

    The states stay in memory between stages (each stage gets its own copy, so none can change
    another's); every file is written as soon as its stage ends, so an interrupted block keeps its
    finished stages on disk. The files equal those of one process per stage, bit for bit. With
    ``keep`` (``layout.kept_iterations``), iterations not in it write their reports but not their states.
    """
    if not 1 <= first <= last:
        raise ValueError(f"a block needs 1 <= first <= last, got {first}..{last}")
    started = time.perf_counter()
    method = build_method(settings)
    ctx = training_context(data_path, settings, device, progress, cuda_graph, batches_at_once)
    ctx.images = ctx.images.to(device)
    cache = {path: load_state(path, settings) for path in layout.block_inputs(run_dir, method, first, last)}
    startup = process_age()
    reports = []
    for t in range(first, last + 1):
        for ref in layout.iteration_refs(method, t):
            stage_start = time.perf_counter()
            inputs = {role: copy.deepcopy(cache[path])
                      for role, path in layout.input_files(run_dir, method, ref.stage, t).items()}
            state, report = method.run(ref.stage, t, inputs, ctx)
            compute = time.perf_counter() - stage_start
            out = layout.state_file(run_dir, ref)
            if keep is None or t in keep:
                save_state(state, out, settings, ref)
            cache[out] = StateFile(state, out)
            reports.append(_save_report(report, ref, settings, ctx, stage_start, compute,
                                        startup if not reports else None, layout.report_of(out)))
        later = {path for u in range(t + 1, last + 1) for stage in method.stages(u)
                 for path in layout.input_files(run_dir, method, stage, u).values()}
        cache = {path: state for path, state in cache.items() if path in later}
    print(f"block {first}..{last}: {time.perf_counter() - started:.1f} s", flush=True)
    return reports


def train_in_memory(settings: dict, ctx: StageContext, protocol: EvaluationProtocol) -> tuple[TrainedModel, dict]:
    """Every stage of iterations 0..T in this process, no file written; the model after the last iteration and
    the training time. For small experiments whose runs take seconds (the Coupled VAE's 2-D mixture), where
    caching each stage as a file would cost more than computing it; every state stays in memory."""
    method = build_method(settings)
    started = time.perf_counter()
    states: dict[StageRef, StateFile] = {}
    for t in range(settings["iterations"] + 1):
        for stage in method.stages(t):
            inputs = {role: StateFile(copy.deepcopy(states[ref])) for role, ref in method.inputs(stage, t).items()}
            state, _ = method.run(stage, t, inputs, ctx)
            states[StageRef(t, stage)] = StateFile(state)
    seconds = time.perf_counter() - started
    end = method.evaluation_points(settings["iterations"])["end"]
    return method.trained_model({role: states[ref] for role, ref in end.items()}, ctx.device, protocol), {
        "train_seconds": seconds}


def training_summary(settings: dict, reports: list[dict]) -> dict:
    """The cost of a run from its stage reports: seconds (total, compute, per stage), device, size."""
    per_stage: dict[str, float] = {}
    for report in reports:
        per_stage[report["stage"]] = per_stage.get(report["stage"], 0.0) + report["seconds"]
    return {
        "method": settings["method"],
        "iterations": max(report["iteration"] for report in reports),
        "train_images": reports[0]["images"],
        "devices": sorted({report["device"] for report in reports}),
        "train_seconds": sum(report["seconds"] for report in reports),
        "compute_seconds": sum(report["compute_seconds"] for report in reports),
        "seconds_per_stage": per_stage,
        "stages": len(reports),
    }


def write_final(settings: dict, input_paths: dict[str, str | Path], report_paths: list, out_dir) -> dict:
    """Copy the final model's state files to ``out_dir/<role>.pt`` (checked, with new manifests) and write
    ``out_dir/training.json``, the run's training cost from every stage report."""
    from .io import load_json

    reports = [load_json(path, "stage report") for path in report_paths]
    if not any(report.get("stage") == "init" for report in reports):
        raise ValueError("the stage reports given to 'final' lack the run's init report")
    out_dir = Path(out_dir)
    for role, path in input_paths.items():
        state = load_state(path, settings)
        source = load_json(manifest_path(path), "manifest")
        save_state(dict(state), out_dir / f"{role}.pt", settings, StageRef(source["iteration"], source["stage"]))
    summary = training_summary(settings, reports)
    save_json(summary, out_dir / "training.json")
    return summary
