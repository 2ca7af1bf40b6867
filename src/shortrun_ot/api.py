"""Trained models from Python: a run's final model, loaded by its results folder, with the run's own method
and settings, as the same :class:`~shortrun_ot.methods.base.TrainedModel` the evaluation uses.

    from shortrun_ot.api import load_run

    model = load_run("results/quick/runs/ours", prepared="data/prepared")
    images = model.sample(16)                       # 16 generated images, (16, 1, 28, 28) on [-1, 1]
    reconstructions = model.reconstruct(images[:4])  # the method's own encoding (ours: Langevin from noise)
    scores = model.anomaly_scores(images[:4])        # higher = more anomalous (Table 2's score), where defined

docs/api.md lists what a model answers; ``tests/test_workflow.py`` runs that example on a trained tiny run.
"""

from __future__ import annotations

from pathlib import Path

from .config import dataset_id, load_run_settings, resolve_device
from .io import load_json
from .layout import final_files
from .methods.base import EvaluationProtocol, TrainedModel
from .pipeline import build_method, load_state, load_training_images


def load_run(run_dir: str | Path, *, prepared: str | Path = "data/prepared", device: str = "cpu",
             batch_size: int = 500, langevin_steps: int = 200) -> TrainedModel:
    """The final model of the run in ``run_dir`` (``<results>/runs/<run>``, after its ``final`` step).

    ``prepared``: the folder of prepared datasets (the configuration's ``data.prepared``); the run's training
    images are read from it when it holds the run's dataset (the Coupled VAE's posterior needs them).
    ``langevin_steps``: K of noise-initialised inference, for methods that encode by Langevin dynamics
    (``evaluation.test_langevin_steps``); ``batch_size``: images per forward pass.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "final" / "training.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run (config.json and final/training.json); train it "
                                "with `snakemake <results>/runs/<run>/final` first")
    settings = load_run_settings(run_dir / "config.json")
    settings["iterations"] = load_json(run_dir / "final" / "training.json", "training summary")["iterations"]
    method = build_method(settings)
    states = {role: load_state(path, settings) for role, path in final_files(run_dir, method).items()}
    data = Path(prepared) / f"{dataset_id(settings)}.pt"
    train_images = load_training_images(data, settings) if data.is_file() else None
    protocol = EvaluationProtocol(batch_size=batch_size, langevin_steps=langevin_steps, train_images=train_images)
    return method.trained_model(states, resolve_device(device), protocol)
