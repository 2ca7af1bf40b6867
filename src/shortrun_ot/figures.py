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


def image_rows_figure(rows: dict[str, dict[str, torch.Tensor]], path: str | Path, columns: int = 10,
                      pdf: bool = False) -> None:
    """Rows of titled image grids (images on the [-1, 1] scale): one row per entry of ``rows`` (a dataset,
    a run), titled above the row (if not empty), one panel per entry of its dict. Each row is as tall as
    its grids. ``pdf``: also save a PDF beside the PNG ``path``."""
    n_columns = max(len(panels) for panels in rows.values())
    grids = {title: {name: make_grid((images.detach().cpu().clamp(-1, 1) + 1) / 2, nrow=columns, padding=1,
                                     pad_value=1.0) for name, images in panels.items()} for title, panels in rows.items()}
    panel_width = 3.2
    heights = [0.5 + (0.3 if title else 0) + panel_width * max(g.shape[1] / g.shape[2] for g in panels.values())
               for title, panels in grids.items()]
    fig = plt.figure(figsize=(panel_width * n_columns, sum(heights)), layout="constrained")
    for subfigure, (row_title, panels) in zip(fig.subfigures(len(rows), 1, height_ratios=heights, squeeze=False)[:, 0],
                                              grids.items()):
        axes = subfigure.subplots(1, n_columns, squeeze=False)[0]
        for ax in axes:
            ax.axis("off")
        for ax, (title, grid) in zip(axes, panels.items()):
            ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title)
        if row_title:
            subfigure.suptitle(row_title, x=0.01, ha="left", fontsize=11, fontweight="bold")
    (_both_formats if pdf else save_figure)(fig, path)


def image_grid_figure(panels: dict[str, torch.Tensor], path: str | Path, columns: int = 10) -> None:
    """Side-by-side grids of images on the [-1, 1] scale, one titled panel per entry (Fig. 4 layout)."""
    image_rows_figure({"": panels}, path, columns)


def _both_formats(fig, path: str | Path) -> None:
    """Save ``fig`` as ``path`` (.png) and beside it as .pdf."""
    path = Path(path)
    atomic_write(path.with_suffix(".pdf"), lambda f: fig.savefig(f, format="pdf", bbox_inches="tight"))
    save_figure(fig, path)


def _latent_limit(populations) -> float:
    """Half-width of square axes that hold every point: 4 (the prior's range) or the largest coordinate."""
    return max(4.0, math.ceil(max(float(z.abs().max()) for z in populations)))


def _scatter_digits(ax, z: torch.Tensor, labels: torch.Tensor, digits: list[int], limit: float) -> None:
    """2-D latents coloured by digit on the axes [-limit, limit]^2."""
    colours = plt.get_cmap("tab10")
    for i, digit in enumerate(digits):
        chosen = labels == digit
        ax.scatter(z[chosen, 0], z[chosen, 1], s=2, alpha=0.5, color=colours(i), label=f"digit {digit}")
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal")
    ax.tick_params(labelsize=7)


def latent_evolution_figure(panels: dict[str, tuple[torch.Tensor, torch.Tensor]], prior: torch.Tensor,
                            path: str | Path) -> None:
    """Fig. 2: 2-D latent populations coloured by digit, one panel per entry, and the prior sample last.

    ``panels`` maps a title to (latents of shape (n, 2), digit labels). Every panel has the same
    fixed, equal axes [-limit, limit]^2, with limit the larger of 4 (the prior's range) and the
    largest coordinate of any panel, so that a population drifting out of the prior's range shows
    and no point is cut off.
    """
    titles = [*panels, "prior sample"]
    limit = _latent_limit([prior, *(z for z, _ in panels.values())])
    fig, axes = plt.subplots(1, len(titles), figsize=(3.0 * len(titles), 3.2), squeeze=False, layout="constrained")
    digits = sorted({int(d) for _, labels in panels.values() for d in labels})
    for ax, title in zip(axes[0], titles):
        if title in panels:
            _scatter_digits(ax, *panels[title], digits, limit)
        else:
            ax.scatter(prior[:, 0], prior[:, 1], s=2, alpha=0.5, color="0.3", label="N(0, I)")
            ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal")
            ax.tick_params(labelsize=7)
        ax.set_title(title, fontsize=9)
    axes[0][0].legend(loc="lower left", fontsize=7, markerscale=4)
    _both_formats(fig, path)


def latent_comparison_figure(panels: dict[str, dict], path: str | Path) -> None:
    """Fig. 3 (and the Coupled VAE's Fig. 3): the 2-D latents of the training images under several models, side
    by side on the same axes, with the prior N(0, I)'s density contours (the circles through which 39 %, 86 %
    and 99 % of its mass lies inside: radii 1, 2, 3) and a note under each title (e.g. the population's OT
    cost to a prior sample).

    ``panels``: title -> {"latents": (n, 2), "labels": (n,), "note": str}.
    """
    limit = _latent_limit([p["latents"] for p in panels.values()])
    digits = sorted({int(d) for p in panels.values() for d in p["labels"]})
    grid = torch.linspace(-limit, limit, 301)
    x, y = torch.meshgrid(grid, grid, indexing="xy")
    density = torch.exp(-(x**2 + y**2) / 2) / (2 * math.pi)
    levels = [math.exp(-r**2 / 2) / (2 * math.pi) for r in (3, 2, 1)]  # increasing density
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.8), squeeze=False, layout="constrained")
    for ax, (title, panel) in zip(axes[0], panels.items()):
        ax.contour(x.numpy(), y.numpy(), density.numpy(), levels=levels, colors="0.4", linewidths=0.8)
        _scatter_digits(ax, panel["latents"], panel["labels"], digits, limit)
        ax.set_title(f"{title}\n{panel['note']}", fontsize=9)
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


def potential_map_figure(source: torch.Tensor, target: torch.Tensor, panels: dict[str, dict], path: str | Path) -> None:
    """AE-OT Fig. 2: per panel (a number of steps), D's surface, the target (green), the source (blue) and the
    source mapped by z + grad D(z) (red). ``panels``: title -> {"mapped": (n, 2), "grid": (x, y, values)}."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False, layout="constrained")
    for ax, (title, panel) in zip(axes[0], panels.items()):
        x, y, values = panel["grid"]
        surface = ax.contourf(x.numpy(), y.numpy(), values.numpy(), levels=20, cmap="Greys", alpha=0.6)
        fig.colorbar(surface, ax=ax, shrink=0.8, label="D")
        for points, colour, label in ((target, "tab:green", "target"), (source, "tab:blue", "source"),
                                      (panel["mapped"], "tab:red", "z + grad D(z)")):
            ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=5, color=colour, label=label)
        ax.set(title=title, aspect="equal")
    axes[0][0].legend(loc="lower left", fontsize=7, markerscale=2)
    _both_formats(fig, path)


def mixture_figure(data: torch.Tensor, panels: dict[str, dict], path: str | Path) -> None:
    """The Coupled VAE's Figs. 1 and 2 (Hao & Shafto, Sec. 5): the 25-Gaussian data, then a row per model with
    (1) generated points, (2) reconstructions of the training points, (3) their codes (posterior means),
    coloured by mode, (4) one posterior draw per training point (the aggregate posterior) over the prior's
    1-, 2-, 3-sigma circles, (5) draws from one training point's posterior (the point's mode and position
    in the title).

    ``panels``: model title -> the arrays of ``mixture.evaluate`` plus ``labels`` (the mode of each point)."""
    columns = ["samples", "reconstructions", "codes", "aggregate posterior", "posterior of one point"]
    fig, axes = plt.subplots(len(panels) + 1, len(columns), figsize=(2.6 * len(columns), 2.6 * (len(panels) + 1)),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    axes[0][0].scatter(data[:, 0], data[:, 1], s=1, alpha=0.4, color="0.2")
    axes[0][0].set_title("data: 25 Gaussians (Fig. 2)", fontsize=8)
    for ax in axes[0][1:]:
        ax.axis("off")
    colours = plt.get_cmap("tab20")
    circle = torch.linspace(0, 2 * math.pi, 200)
    for row, (title, panel) in zip(axes[1:], panels.items()):
        labels = panel["labels"]
        for ax, key in zip(row, ["samples", "reconstructions", "codes", "aggregate_posterior", "posterior"]):
            points = panel[key].detach()
            colour = [colours(int(label) % 20) for label in labels] if key in ("codes", "reconstructions") else "0.2"
            if key == "posterior":
                ax.hist2d(points[:, 0].numpy(), points[:, 1].numpy(), bins=60, cmap="viridis")
            else:
                ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4, c=colour)
            if key in ("codes", "aggregate_posterior"):
                for radius in (1, 2, 3):
                    ax.plot(radius * circle.cos(), radius * circle.sin(), color="0.5", linewidth=0.6)
                ax.set(xlim=(-4, 4), ylim=(-4, 4))
            elif key != "posterior":
                ax.set(xlim=(-3, 3), ylim=(-3, 3))
        row[0].set_ylabel(title, fontsize=10, fontweight="bold")
        x, y = (float(c) for c in panel["posterior_of"])
        row[4].set_title(f"q(z | x = ({x:.2f}, {y:.2f}))", fontsize=7)
        for ax, name in zip(row[:4], columns):
            ax.set_title(name, fontsize=8)
    _both_formats(fig, path)
