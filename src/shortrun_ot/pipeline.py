"""The three stages of one training iteration (Alg. 1) as functions from files to files.

Iteration t reads iteration t-1's checkpoint and latents and writes its own:
``inferred.pt`` (inference), ``corrected.pt`` (correction, only when t % L == 0),
``checkpoint.pt`` (learning), each with a JSON of what the stage measured.
Iteration 0 holds the Xavier-initialised generator and the initial latents z ~ N(0, I).

``infer``, ``correct`` and ``learn_stage`` run one stage per process; ``train_block`` runs
iterations first..last in one process and writes the same files, bit for bit (README,
"Performance"). Stage JSONs carry ``compute_seconds`` (the stage's arithmetic) beside
``seconds`` (loading and saving included) and, for a process's first stage,
``startup_seconds`` (process start to its first batch: imports, CUDA start-up, loading).
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import torch

from . import data, layout
from .config import stage_rng
from .io import load_tensors, manifest_path, save_json, save_tensors, verify_manifest, write_manifest
from .langevin import short_run_inference
from .learning import learn, make_optimizer
from .models import build_generator, frozen_batchnorm_statistics
from .ot import transport_correction

ARCHITECTURE_OF_DATASET = {"mnist": "mnist", "mnist5k": "mnist"}


def process_age() -> float:
    """Seconds since this process started (interpreter start-up and imports included)."""
    return time.time() - psutil.Process().create_time()


def load_training_images(path: str | Path, settings: dict) -> torch.Tensor:
    """The run's training images on the [-1, 1] scale (the first ``train_images`` of them)."""
    images = data.load_prepared(path, "train")
    limit = settings["train_images"]
    if limit is not None:
        if limit > len(images):
            raise ValueError(f"config key 'train_images': {limit} exceeds the {len(images)} images in {path}")
        images = images[:limit]
    return images


def new_generator(settings: dict) -> torch.nn.Module:
    return build_generator(ARCHITECTURE_OF_DATASET[settings["dataset"]], settings["latent_dim"])


def save_checkpoint(path: str | Path, generator, optimizer, settings: dict, iteration: int) -> None:
    """Write the checkpoint atomically, then its manifest ``checkpoint.pt.json`` (SHA-256, size)."""
    architecture = ARCHITECTURE_OF_DATASET[settings["dataset"]]
    save_tensors(
        {
            "model": generator.state_dict(),
            "optimizer": optimizer.state_dict(),
            "architecture": architecture,
            "latent_dim": settings["latent_dim"],
            "iteration": iteration,
        },
        path,
    )
    write_manifest(path, architecture=architecture, latent_dim=settings["latent_dim"], iteration=iteration)


def load_checkpoint(path: str | Path, settings: dict, device: torch.device, with_optimizer: bool = False):
    """The generator (and, for learning, its Adam state) from ``path``, checked against the configuration.

    The file must match the SHA-256 of its manifest and hold the configured architecture.
    Returns the generator, or (generator, optimizer) with ``with_optimizer``; building Adam imports
    torch._dynamo (about 2 s), which the other stages do without.
    """
    remedy = (f"delete {path} and {manifest_path(path)} and rerun the same Snakemake command "
              "(it recomputes that iteration and the ones after it)")
    verify_manifest(path, "checkpoint", remedy)
    state = load_tensors(path, "checkpoint")
    if not isinstance(state, dict) or not {"model", "optimizer"} <= set(state):
        raise ValueError(f"checkpoint {path} is not a checkpoint of this workflow (no 'model'/'optimizer'); {remedy}")
    expected = (ARCHITECTURE_OF_DATASET[settings["dataset"]], settings["latent_dim"])
    found = (state.get("architecture"), state.get("latent_dim"))
    if found != expected:
        raise ValueError(
            f"checkpoint {path} holds architecture/latent_dim {found}, but the configuration asks for {expected}; "
            "delete the run's directory or fix 'dataset'/'latent_dim'"
        )
    generator = new_generator(settings).to(device)
    try:
        generator.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"checkpoint {path} does not fit the configured generator ({first}); {remedy}") from None
    if not with_optimizer:
        return generator
    learning = settings["learning"]
    optimizer = make_optimizer(generator, learning["lr"], learning["beta1"], learning["beta2"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"checkpoint {path} holds an optimizer state that does not fit ({exc}); {remedy}") from None
    return generator, optimizer


def load_latents(path: str | Path, n: int | None, dim: int | None = None) -> torch.Tensor:
    """Finite latent tensor (n, d) stored under key ``latents``; its length must match the dataset (``n``)."""
    remedy = f"delete {path} and rerun the same Snakemake command (it recomputes the file)"
    state = load_tensors(path, "latents file")
    latents = state.get("latents") if isinstance(state, dict) else None
    if not isinstance(latents, torch.Tensor) or latents.dim() != 2:
        raise ValueError(f"latents file {path} holds no (n, d) tensor under 'latents'; {remedy}")
    if n is not None and latents.shape[0] != n:
        raise ValueError(
            f"latents file {path} holds {latents.shape[0]} latents but the dataset has {n} images; the file "
            f"belongs to other 'dataset'/'train_images' settings: {remedy}, or fix the configuration"
        )
    if dim is not None and latents.shape[1] != dim:
        raise ValueError(
            f"latents file {path} holds {latents.shape[1]}-dimensional latents but 'latent_dim' is {dim}; {remedy}"
        )
    if not torch.isfinite(latents).all():
        raise ValueError(f"latents file {path} holds non-finite values; {remedy}")
    return latents


def initialise(settings: dict, data_path: str | Path, checkpoint_out: str | Path, latents_out: str | Path,
               prior_out: str | Path) -> dict:
    """Iteration 0: Xavier-normal generator, initial latents and the fixed prior sample {z_j} of Alg. 1."""
    n = len(load_training_images(data_path, settings))
    seed = settings["seed"]
    torch.manual_seed(stage_rng(seed, 0, "model").initial_seed())
    generator = new_generator(settings)
    learning = settings["learning"]
    optimizer = make_optimizer(generator, learning["lr"], learning["beta1"], learning["beta2"])
    shape = (n, settings["latent_dim"])
    save_tensors({"latents": torch.randn(shape, generator=stage_rng(seed, 0, "latents"))}, latents_out)
    save_tensors({"latents": torch.randn(shape, generator=stage_rng(seed, 0, "prior"))}, prior_out)
    save_checkpoint(checkpoint_out, generator, optimizer, settings, 0)
    return {"iteration": 0, "images": n, "parameters": sum(p.numel() for p in generator.parameters())}


def _infer(settings, iteration, images, generator, z_prev, device, cuda_graph, progress):
    """K-step short-run Langevin (Eq. 7) for every image, persistent or noise-initialised: (z, report)."""
    langevin = settings["langevin"]
    if langevin["persistent"]:
        z0 = z_prev
    else:
        z0 = torch.randn((len(images), settings["latent_dim"]), generator=stage_rng(settings["seed"], iteration, "init"))
    start = time.perf_counter()
    generator.train()
    with frozen_batchnorm_statistics(generator):
        z, stats = short_run_inference(
            generator, images, z0, steps=langevin["steps"], step_size=langevin["step_size"],
            sigma=settings["sigma"], batch_size=settings["batch_size"],
            rng=stage_rng(settings["seed"], iteration, "langevin"), device=device, progress=progress,
            backoff=langevin.get("backoff", 0), cuda_graph=cuda_graph,
        )
    measured = {k: v for k, v in vars(stats).items() if v is not None}  # "backoff" only when it fired
    return z, {"stage": "infer", "iteration": iteration, **measured, "compute_seconds": time.perf_counter() - start}


def _correct(settings, iteration, z, targets, init_h, device, progress):
    """OT assignment to the prior sample (Alg. 2), then Eq. (10): (file state, report).

    The state holds the corrected latents under ``latents``, the dual vector ``h`` and ``target_index``.
    """
    ot = settings["correction"]
    start = time.perf_counter()
    corrected, result = transport_correction(
        z, targets, ot["alpha"], eps=ot["eps"], max_iter=ot["max_iter"], repair=ot["repair"],
        init_h=init_h, device=device, seed=settings["seed"] + iteration, progress=progress,
    )
    state = {"latents": corrected, "h": result.h.cpu(), "target_index": result.target_index.cpu()}
    report = {"stage": "correct", "iteration": iteration, "alpha": ot["alpha"], **result.summary(),
              "compute_seconds": time.perf_counter() - start}
    return state, report


def _learn(settings, iteration, images, generator, optimizer, z, device, progress):
    """L2 passes of Adam on the (z, I) pairs (Alg. 1, line 13), checked for finiteness: the report."""
    start = time.perf_counter()
    torch.manual_seed(stage_rng(settings["seed"], iteration, "torch").initial_seed())
    stats = learn(
        generator, optimizer, images, z, passes=settings["learning"]["passes"], batch_size=settings["batch_size"],
        sigma=settings["sigma"], rng=stage_rng(settings["seed"], iteration, "shuffle"), device=device,
        progress=progress,
    )
    losses = torch.tensor([stats.loss_first_pass, stats.loss_last_pass, stats.grad_norm])
    if not torch.isfinite(losses).all():  # the loss is >= 0, so one non-finite batch makes its pass non-finite
        raise FloatingPointError(
            f"the learning loss became non-finite (first pass {stats.loss_first_pass}, last pass "
            f"{stats.loss_last_pass}, mean gradient norm {stats.grad_norm})"
        )
    if not all(torch.isfinite(p).all() for p in generator.parameters()):
        raise FloatingPointError("generator parameters became non-finite")
    return {"stage": "learn", "iteration": iteration, **vars(stats), "compute_seconds": time.perf_counter() - start}


def _load_previous_h(previous, n: int) -> torch.Tensor | None:
    """The dual vector h of the previous correction (warm start of Alg. 2), checked."""
    if not previous:
        return None
    state = load_tensors(previous, "previous correction")
    if not isinstance(state, dict) or not isinstance(state.get("h"), torch.Tensor) or len(state["h"]) != n:
        raise ValueError(
            f"previous correction {previous} holds no dual vector 'h' of length {n}; delete it and rerun "
            "the same Snakemake command"
        )
    return state["h"]


def _save_report(report: dict, started: float, startup: float | None, stats_out) -> dict:
    """Add the stage's wall ``seconds`` (and the process's ``startup_seconds``), then write its JSON."""
    report["seconds"] = time.perf_counter() - started
    if startup is not None:
        report["startup_seconds"] = startup
    save_json(report, stats_out)
    return report


def infer(settings: dict, iteration: int, data_path, checkpoint, latents, latents_out, stats_out,
          device: torch.device, progress: bool = False, cuda_graph: bool = False) -> dict:
    """Inference stage: K-step short-run Langevin (Eq. 7), persistent or noise-initialised."""
    started = time.perf_counter()
    images = load_training_images(data_path, settings)
    generator = load_checkpoint(checkpoint, settings, device)
    z_prev = load_latents(latents, len(images), settings["latent_dim"]) if settings["langevin"]["persistent"] else None
    startup = process_age()
    z, report = _infer(settings, iteration, images, generator, z_prev, device, cuda_graph, progress)
    save_tensors({"latents": z}, latents_out)
    _save_report(report, started, startup, stats_out)
    return report


def correct(settings: dict, iteration: int, latents, prior, previous, latents_out, stats_out,
            device: torch.device, progress: bool = False) -> dict:
    """Correction stage: OT assignment to the prior sample (Alg. 2), then Eq. (10).

    ``previous`` is the last correction's output, whose dual vector h warm-starts this one.
    """
    started = time.perf_counter()
    z = load_latents(latents, None, settings["latent_dim"])
    targets = load_latents(prior, len(z), settings["latent_dim"])
    init_h = _load_previous_h(previous, len(z))
    startup = process_age()
    state, report = _correct(settings, iteration, z, targets, init_h, device, progress)
    save_tensors(state, latents_out)
    _save_report(report, started, startup, stats_out)
    return report


def learn_stage(settings: dict, iteration: int, data_path, checkpoint, latents, checkpoint_out, stats_out,
                device: torch.device, progress: bool = False) -> dict:
    """Learning stage: L2 passes of Adam on the (z, I) pairs (Alg. 1, line 13)."""
    started = time.perf_counter()
    images = load_training_images(data_path, settings)
    generator, optimizer = load_checkpoint(checkpoint, settings, device, with_optimizer=True)
    z = load_latents(latents, len(images), settings["latent_dim"])
    startup = process_age()
    report = _learn(settings, iteration, images, generator, optimizer, z, device, progress)
    save_checkpoint(checkpoint_out, generator, optimizer, settings, iteration)
    _save_report(report, started, startup, stats_out)
    return report


def train_block(settings: dict, run_dir, first: int, last: int, data_path, device: torch.device,
                progress: bool = False, cuda_graph: bool = False) -> list[dict]:
    """Iterations first..last in one process, writing every iteration's files as the stages do.

    The generator, its Adam state, the images and the latents stay in memory between
    iterations; each file is written as soon as its stage ends, so an interrupted block keeps
    its finished iterations on disk. The files equal those of one process per stage, bit for bit.
    """
    if not 1 <= first <= last:
        raise ValueError(f"a block needs 1 <= first <= last, got {first}..{last}")
    started = time.perf_counter()
    images = load_training_images(data_path, settings).to(device)
    generator, optimizer = load_checkpoint(layout.checkpoint_of(run_dir, first - 1), settings, device,
                                           with_optimizer=True)
    z = load_latents(layout.latents_after(run_dir, settings, first - 1), len(images), settings["latent_dim"])
    targets = h = None
    startup = process_age()
    reports = []
    for t in range(first, last + 1):
        stage_start = time.perf_counter()
        z, report = _infer(settings, t, images, generator, z, device, cuda_graph, progress)
        outputs = layout.stage_outputs(run_dir, "infer", t)
        save_tensors({"latents": z}, outputs["latents"])
        reports.append(_save_report(report, stage_start, startup if t == first else None, outputs["stats"]))
        if "correct" in layout.stages_of(settings, t):
            stage_start = time.perf_counter()
            if targets is None:
                targets = load_latents(layout.prior_of(run_dir), len(z), settings["latent_dim"])
                h = _load_previous_h(layout.previous_correction(run_dir, settings, t), len(z))
            state, report = _correct(settings, t, z, targets, h, device, progress)
            z, h = state["latents"], state["h"]
            outputs = layout.stage_outputs(run_dir, "correct", t)
            save_tensors(state, outputs["latents"])
            reports.append(_save_report(report, stage_start, None, outputs["stats"]))
        stage_start = time.perf_counter()
        report = _learn(settings, t, images, generator, optimizer, z, device, progress)
        outputs = layout.stage_outputs(run_dir, "learn", t)
        save_checkpoint(outputs["checkpoint"], generator, optimizer, settings, t)
        reports.append(_save_report(report, stage_start, None, outputs["stats"]))
    print(f"block {first}..{last}: {time.perf_counter() - started:.1f} s", flush=True)
    return reports
