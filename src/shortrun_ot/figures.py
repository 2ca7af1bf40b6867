"""Figures: image grids (Fig. 4) and latent-space plots (Figs. 2, 3, 5)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from .io import atomic_write  # noqa: E402


def save_figure(fig, path: str | Path) -> None:
    """Save a matplotlib figure atomically (format from the suffix: .png, .pdf) and close it."""
    atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight"))
    plt.close(fig)


def image_grid_figure(panels: dict[str, torch.Tensor], path: str | Path, columns: int = 10) -> None:
    """Side-by-side grids of images on the [-1, 1] scale, one titled panel per entry (Fig. 4 layout)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (title, images) in zip(axes if len(panels) > 1 else [axes], panels.items()):
        grid = make_grid((images.detach().cpu().clamp(-1, 1) + 1) / 2, nrow=columns, padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    save_figure(fig, path)


def _both_formats(fig, path: str | Path) -> None:
    """Save ``fig`` as ``path`` (.png) and beside it as .pdf."""
    path = Path(path)
    atomic_write(path.with_suffix(".pdf"), lambda f: fig.savefig(f, format="pdf", bbox_inches="tight"))
    save_figure(fig, path)


def latent_evolution_figure(panels: dict[str, tuple[torch.Tensor, torch.Tensor]], prior: torch.Tensor,
                            path: str | Path) -> None:
    """Fig. 2: 2-D latent populations coloured by digit, one panel per entry, and the prior sample last.

    ``panels`` maps a title to (latents of shape (n, 2), digit labels). Every panel has the same
    fixed, equal axes [-limit, limit]^2, with limit the larger of 4 (the prior's range) and the
    largest coordinate of any panel, so that a population drifting out of the prior's range shows
    and no point is cut off.
    """
    titles = [*panels, "prior sample"]
    largest = max(float(z.abs().max()) for z in [prior, *(z for z, _ in panels.values())])
    limit = max(4.0, math.ceil(largest))
    fig, axes = plt.subplots(1, len(titles), figsize=(3.0 * len(titles), 3.2), squeeze=False, layout="constrained")
    digits = sorted({int(d) for _, labels in panels.values() for d in labels})
    colours = plt.get_cmap("tab10")
    for ax, title in zip(axes[0], titles):
        if title in panels:
            z, labels = panels[title]
            for i, digit in enumerate(digits):
                chosen = labels == digit
                ax.scatter(z[chosen, 0], z[chosen, 1], s=2, alpha=0.5, color=colours(i), label=f"digit {digit}")
        else:
            ax.scatter(prior[:, 0], prior[:, 1], s=2, alpha=0.5, color="0.3", label="N(0, I)")
        ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(loc="lower left", fontsize=7, markerscale=4)
    _both_formats(fig, path)


def alpha_curves_figure(curves, evaluations, path: str | Path, value_name: str = "alpha") -> None:
    """Fig. 5: per sweep value, the latents' distance to the prior and the training MSE over iterations
    (``curves``: columns value, iteration, latent_fd, mse) and FID at the evaluated iterations
    (``evaluations``: columns value, iteration, fid)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    colours = plt.get_cmap("viridis")
    values = sorted(curves["value"].unique())
    for i, value in enumerate(values):
        colour = colours(i / max(len(values) - 1, 1))
        curve = curves[curves["value"] == value].sort_values("iteration")
        points = evaluations[evaluations["value"] == value].sort_values("iteration")
        label = f"{value_name} = {value:g}"
        axes[0].plot(curve["iteration"], curve["latent_fd"], color=colour, label=label)
        axes[1].plot(curve["iteration"], curve["mse"], color=colour, label=label)
        axes[2].plot(points["iteration"], points["fid"], "o-", color=colour, label=label)
    axes[0].set(title="distance of q(z) to the prior", ylabel="Frechet distance to N(0, I)", yscale="log")
    axes[1].set(title="reconstruction of the training images", ylabel="MSE", yscale="log")
    axes[2].set(title="generation", ylabel="FID of prior samples")
    for ax in axes:
        ax.set_xlabel("iteration")
    axes[2].legend(fontsize=8)
    _both_formats(fig, path)


def chain_stability_figure(table, path: str | Path, threshold: float) -> None:
    """Growth of a tiny perturbation between two Langevin chains (same noise) against the step size,
    one line per run (``table``: columns run, step_size, growth); above ``threshold`` the chains are chaotic."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for run, rows in table.groupby("run", sort=False):
        rows = rows.sort_values("step_size")
        ax.plot(rows["step_size"], rows["growth"], "o-", label=run)
    ax.axhline(threshold, color="0.5", linestyle="--", linewidth=1, label="no growth")
    ax.set(xscale="log", yscale="log", xlabel="Langevin step size s",
           ylabel="median distance after K steps / initial distance")
    ax.legend(fontsize=8)
    _both_formats(fig, path)
