"""The three stages of one training iteration (Alg. 1) as functions from files to files.

Iteration t reads iteration t-1's checkpoint and latents and writes its own:
``inferred.pt`` (inference), ``corrected.pt`` (correction, only when t % L == 0),
``checkpoint.pt`` (learning), each with a JSON of what the stage measured.
Iteration 0 holds the Xavier-initialised generator and the initial latents z ~ N(0, I).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from . import data
from .config import stage_rng
from .io import load_tensors, manifest_path, save_json, save_tensors, verify_manifest, write_manifest
from .langevin import short_run_inference
from .learning import learn, make_optimizer
from .models import build_generator, frozen_batchnorm_statistics
from .ot import transport_correction

ARCHITECTURE_OF_DATASET = {"mnist": "mnist", "mnist5k": "mnist"}


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


def infer(settings: dict, iteration: int, data_path, checkpoint, latents, latents_out, stats_out,
          device: torch.device, progress: bool = False) -> dict:
    """Inference stage: K-step short-run Langevin (Eq. 7), persistent or noise-initialised."""
    start = time.perf_counter()
    images = load_training_images(data_path, settings)
    generator = load_checkpoint(checkpoint, settings, device)
    langevin = settings["langevin"]
    if langevin["persistent"]:
        z0 = load_latents(latents, len(images), settings["latent_dim"])
    else:
        z0 = torch.randn((len(images), settings["latent_dim"]), generator=stage_rng(settings["seed"], iteration, "init"))
    generator.train()
    with frozen_batchnorm_statistics(generator):
        z, stats = short_run_inference(
            generator, images, z0, steps=langevin["steps"], step_size=langevin["step_size"],
            sigma=settings["sigma"], batch_size=settings["batch_size"],
            rng=stage_rng(settings["seed"], iteration, "langevin"), device=device, progress=progress,
            backoff=langevin.get("backoff", 0),
        )
    save_tensors({"latents": z}, latents_out)
    measured = {k: v for k, v in vars(stats).items() if v is not None}  # "backoff" only when it fired
    report = {"stage": "infer", "iteration": iteration, **measured, "seconds": time.perf_counter() - start}
    save_json(report, stats_out)
    return report


def correct(settings: dict, iteration: int, latents, prior, previous, latents_out, stats_out,
            device: torch.device, progress: bool = False) -> dict:
    """Correction stage: OT assignment to the prior sample (Alg. 2), then Eq. (10).

    ``previous`` is the last correction's output, whose dual vector h warm-starts this one.
    """
    start = time.perf_counter()
    z = load_latents(latents, None, settings["latent_dim"])
    targets = load_latents(prior, len(z), settings["latent_dim"])
    init_h = None
    if previous:
        state = load_tensors(previous, "previous correction")
        if not isinstance(state, dict) or not isinstance(state.get("h"), torch.Tensor) or len(state["h"]) != len(z):
            raise ValueError(
                f"previous correction {previous} holds no dual vector 'h' of length {len(z)}; delete it and rerun "
                "the same Snakemake command"
            )
        init_h = state["h"]
    ot = settings["correction"]
    corrected, result = transport_correction(
        z, targets, ot["alpha"], eps=ot["eps"], max_iter=ot["max_iter"], repair=ot["repair"],
        init_h=init_h, device=device, seed=settings["seed"] + iteration, progress=progress,
    )
    save_tensors({"latents": corrected, "h": result.h.cpu(), "target_index": result.target_index.cpu()}, latents_out)
    report = {"stage": "correct", "iteration": iteration, "alpha": ot["alpha"], **result.summary(),
              "seconds": time.perf_counter() - start}
    save_json(report, stats_out)
    return report


def learn_stage(settings: dict, iteration: int, data_path, checkpoint, latents, checkpoint_out, stats_out,
                device: torch.device, progress: bool = False) -> dict:
    """Learning stage: L2 passes of Adam on the (z, I) pairs (Alg. 1, line 13)."""
    start = time.perf_counter()
    images = load_training_images(data_path, settings)
    generator, optimizer = load_checkpoint(checkpoint, settings, device, with_optimizer=True)
    z = load_latents(latents, len(images), settings["latent_dim"])
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
    save_checkpoint(checkpoint_out, generator, optimizer, settings, iteration)
    report = {"stage": "learn", "iteration": iteration, **vars(stats), "seconds": time.perf_counter() - start}
    save_json(report, stats_out)
    return report
