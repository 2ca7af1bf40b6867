"""Figures: image grids (Fig. 4) and latent-space plots (Figs. 2, 3, 5)."""

from __future__ import annotations

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
