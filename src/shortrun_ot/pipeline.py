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
from .config import dataset_id, stage_rng
from .io import load_tensors, save_json, save_tensors
from .langevin import short_run_inference
from .learning import learn, make_optimizer
from .models import build_generator, frozen_batchnorm_statistics
from .ot import transport_correction

ARCHITECTURE_OF_DATASET = {"mnist": "mnist", "mnist5k": "mnist"}


def prepared_path(prepared_root: str | Path, settings: dict) -> Path:
    """Where the prepared dataset of a run lives."""
    return Path(prepared_root) / f"{dataset_id(settings)}.pt"


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
    save_tensors(
        {
            "model": generator.state_dict(),
            "optimizer": optimizer.state_dict(),
            "architecture": ARCHITECTURE_OF_DATASET[settings["dataset"]],
            "latent_dim": settings["latent_dim"],
            "iteration": iteration,
        },
        path,
    )


def load_checkpoint(path: str | Path, settings: dict, device: torch.device, with_optimizer: bool = False):
    """The generator (and, for learning, its Adam state) from ``path``, checked against the configuration.

    Returns the generator, or (generator, optimizer) with ``with_optimizer``; building Adam imports
    torch._dynamo (about 2 s), which the other stages do without.
    """
    state = load_tensors(path, "checkpoint")
    expected = (ARCHITECTURE_OF_DATASET[settings["dataset"]], settings["latent_dim"])
    found = (state.get("architecture"), state.get("latent_dim"))
    if found != expected:
        raise ValueError(
            f"checkpoint {path} holds architecture/latent_dim {found}, but the configuration asks for {expected}; "
            "delete the run's directory or fix 'dataset'/'latent_dim'"
        )
    generator = new_generator(settings).to(device)
    generator.load_state_dict(state["model"])
    if not with_optimizer:
        return generator
    learning = settings["learning"]
    optimizer = make_optimizer(generator, learning["lr"], learning["beta1"], learning["beta2"])
    optimizer.load_state_dict(state["optimizer"])
    return generator, optimizer


def load_latents(path: str | Path, n: int) -> torch.Tensor:
    """Latent tensor (n, d) stored under key ``latents``; its length must match the dataset."""
    latents = load_tensors(path, "latents file")["latents"]
    if latents.shape[0] != n:
        raise ValueError(f"latents file {path} holds {latents.shape[0]} latents but the dataset has {n} images")
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
        z0 = load_latents(latents, len(images))
    else:
        z0 = torch.randn((len(images), settings["latent_dim"]), generator=stage_rng(settings["seed"], iteration, "init"))
    generator.train()
    with frozen_batchnorm_statistics(generator):
        z, stats = short_run_inference(
            generator, images, z0, steps=langevin["steps"], step_size=langevin["step_size"],
            sigma=settings["sigma"], batch_size=settings["batch_size"],
            rng=stage_rng(settings["seed"], iteration, "langevin"), device=device, progress=progress,
        )
    save_tensors({"latents": z}, latents_out)
    report = {"stage": "infer", "iteration": iteration, **vars(stats), "seconds": time.perf_counter() - start}
    save_json(report, stats_out)
    return report


def correct(settings: dict, iteration: int, latents, prior, previous, latents_out, stats_out,
            device: torch.device, progress: bool = False) -> dict:
    """Correction stage: OT assignment to the prior sample (Alg. 2), then Eq. (10).

    ``previous`` is the last correction's output, whose dual vector h warm-starts this one.
    """
    start = time.perf_counter()
    z = load_tensors(latents, "latents file")["latents"]
    targets = load_latents(prior, len(z))
    init_h = load_tensors(previous, "previous correction")["h"] if previous else None
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
    z = load_latents(latents, len(images))
    torch.manual_seed(stage_rng(settings["seed"], iteration, "torch").initial_seed())
    stats = learn(
        generator, optimizer, images, z, passes=settings["learning"]["passes"], batch_size=settings["batch_size"],
        sigma=settings["sigma"], rng=stage_rng(settings["seed"], iteration, "shuffle"), device=device,
        progress=progress,
    )
    if not all(torch.isfinite(p).all() for p in generator.parameters()):
        raise FloatingPointError("generator parameters became non-finite")
    save_checkpoint(checkpoint_out, generator, optimizer, settings, iteration)
    report = {"stage": "learn", "iteration": iteration, **vars(stats), "seconds": time.perf_counter() - start}
    save_json(report, stats_out)
    return report
