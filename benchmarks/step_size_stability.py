"""Where Langevin inference (Eq. 6) blows up on the SVHN and CelebA generators of Table 7 (docs/datasets.md).

For each dataset: a freshly initialised generator g (Xavier normal), 200 images I = g(z*) + 0.3 eps with
z* ~ N(0, I_64), and K = 50 steps of the short-run inference from N(0, I) (``ours``'s settings of that
dataset in params.yaml, the step size replaced); prints the mean norm of the inferred latents per step
size (the true one is about 8) or the step at which log p(I, z) became non-finite. Example::

    python benchmarks/step_size_stability.py --datasets svhn celeba --step-sizes 0.03 0.1 0.3 1 3
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import yaml

from shortrun_ot.config import run_settings, stage_rng
from shortrun_ot.langevin import DivergenceError
from shortrun_ot.methods.shortrun import infer_latents
from shortrun_ot.models import ARCHITECTURES, architecture_of, build_generator

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["svhn", "celeba"])
    parser.add_argument("--step-sizes", nargs="+", type=float, default=[0.03, 0.1, 0.3, 1.0, 3.0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "params.yaml").read_text())
    for dataset in args.datasets:
        torch.manual_seed(0)
        settings = run_settings(config, "ours", dataset)
        d, shape = settings["latent_dim"], ARCHITECTURES[architecture_of(dataset)]["image_shape"]
        generator = build_generator(architecture_of(dataset), d)
        with torch.no_grad():
            images = generator(torch.randn(args.images, d)) + settings["sigma"] * torch.randn(args.images, *shape)
        for step_size in args.step_sizes:
            trial = copy.deepcopy(settings)
            trial["langevin"].update(step_size=step_size, steps=args.steps)
            trial["batch_size"] = args.images
            try:
                z = infer_latents(trial, generator, images, torch.randn(args.images, d), stage_rng(0, 1, "langevin"),
                                  torch.device("cpu"), cuda_graph=False)
                z = z[0] if isinstance(z, tuple) else z
                print(f"{dataset} s={step_size}: mean |z| {float(z.norm(dim=1).mean()):.2f}", flush=True)
            except DivergenceError as exc:
                print(f"{dataset} s={step_size}: {str(exc).split(';')[0]}", flush=True)


if __name__ == "__main__":
    main()
