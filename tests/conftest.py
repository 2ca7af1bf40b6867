import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp: Path, compute: dict | None = None, **training) -> Path:
    """A few-iteration configuration on a few hundred embedded MNIST digits, written under ``tmp``."""
    config = {
        "results": str(tmp / "results"),
        "data": {"raw_root": str(tmp / "raw"), "prepared": str(tmp / "prepared")},
        "device": "cpu",
        "training": {"dataset": "mnist5k", "train_images": 200, "batch_size": 100, "iterations": 4, **training},
        "methods": {"shortrun": {"langevin": {"steps": 3, "step_size": 0.05}, "correction": {"every": 2}}},
        "evaluation": {"runs": ["ours", "abp"], "datasets": ["mnist5k"], "fid_samples": 20, "fid_real_images": 20, "test_langevin_steps": 3,
                       "test_images": 40, "batch_size": 20},
    }
    config["compute"] = compute or {"iterations_per_job": 1}  # per-stage jobs unless a test asks for blocks
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def with_figures(config: dict) -> dict:
    """Add the figures and ablation tables of Sec. 6 (Figs. 2-5, Tables 3-6, chain stability, occlusion),
    AE-OT's (eight Gaussians; the MNIST table and the CelebA figures, on the tiny runs) and the Coupled VAE's
    (the mixture tables and figure; the MNIST figures on 2-D tiny runs) to a tiny config."""
    digits01 = {"classes": [0, 1], "latent_dim": 2}
    config["runs"] = {"digits01": {"method": "shortrun", **digits01},
                      "vae-digits01": {"method": "vae", **digits01, "iterations": 2},
                      "cvae-digits01": {"method": "cvae", **digits01, "iterations": 2, "posterior_draws": 100,
                                        "likelihood": "bernoulli"},
                      "ours-missing50": {"method": "shortrun", "occlusion": {"missing": 0.5}}}
    config["sweeps"] = {
        "alpha": {"runs": ["ours"], "key": "correction.alpha", "values": [0.0, 0.9]},
        "step_size": {"runs": ["ours"], "key": "langevin.step_size", "values": [0.01, 0.05]},
        "steps": {"runs": ["ours"], "key": "langevin.steps", "values": [2, 3]},
        # Tables 3 and 6 (params.yaml's figures, which a --configfile cannot remove) at ours' own values: no new run
        "latent_dim": {"runs": ["ours"], "key": "latent_dim", "values": [30]},
        "learning_passes": {"runs": ["ours"], "key": "learning.passes", "values": [3]},
    }
    config["figures"] = {
        "figure2": {"run": "digits01"},
        "figure3": {"runs": ["vae-digits01", "digits01"]},
        "figure4": {"runs": ["ours", "ours-missing50"]},
        "table5": {"sweep": "steps"},
        "occlusion": {"runs": ["ours-missing50"]},
        "figure5": {"sweep": "alpha", "fid_every": 2},
        "table4": {"sweep": "step_size"},
        "eight_gaussians": {"seed": 0, "points_per_mode": 4, "radius": 10, "snapshots": [1, 3],
                            "potential": {"layers": 3, "width": 8, "slope": 0.0, "gradient_weight": 0.0,
                                          "learning": {"lr": 0.01, "beta1": 0.5, "beta2": 0.999}}},
        "chain_stability": {"runs": ["ours"], "step_sizes": [0.01, 3.0], "steps": 5, "images": 20,
                            "perturbation": 1e-3},
        "aeot_mnist": {"runs": ["ours", "abp"], "samples": 20, "classifier": {"epochs": 1, "min_accuracy": 0.5}},
        "aeot_celeba": {"runs": ["ours", "abp"], "pairs": 2, "steps": 4},
        # the Coupled VAE's experiments: every model of params.yaml (a --configfile cannot remove one) on 100 points
        "coupled_vae_mixture": {"seeds": 2, "points_per_mode": 4, "samples": 50,
                                "training": {"latent_dim": 2, "batch_size": 50, "iterations": 2},
                                "models": {"C-VAE": {"posterior_draws": 200}}},
        "coupled_vae_mnist": {"runs": ["vae-digits01", "cvae-digits01"], "pairs": 2, "steps": 3},
    }
    return config


def snakemake(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real Snakemake CLI of this environment in the repository."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture
def repo() -> Path:
    return REPO
