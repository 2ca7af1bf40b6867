"""A small digit classifier, the offline stand-in for the Inception network behind AE-OT's Inception Score.

Liu et al. (Table 1) report the Inception Score of MNIST samples; that needs the Inception
network's 1008-way logits, which the offline FID weights of this project lack. The workflow
therefore also trains this classifier on the prepared training digits, checks its accuracy on the
test digits, and scores samples with the same formula (``metrics.inception_score``): a
"classifier score", not the paper's metric, between 1 (every sample alike, or every sample
ambiguous) and 10 (confident and balanced over the ten digits).
"""

from __future__ import annotations

import torch
from torch import nn

from .learning import train_epoch


class DigitClassifier(nn.Module):
    """Two 5x5 convolutions (32, 64 channels, ReLU, 2x2 max-pooling), pooled to 4x4, then 128 ReLU units
    and ten logits; any image size and channel count."""

    def __init__(self, channels: int = 1, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                     seed: int, device, progress: bool = False) -> DigitClassifier:
    """Adam on the cross-entropy of the labelled ``images`` ([-1, 1] scale) for ``epochs`` epochs."""
    torch.manual_seed(seed)
    model = DigitClassifier(images.shape[1]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)

    def batch_loss(indices):  # train_epoch shuffles the indices; images and labels follow them
        indices = indices.cpu()
        logits = model(images[indices].to(device))
        return nn.functional.cross_entropy(logits, labels[indices].to(device)), {}

    for epoch in range(epochs):
        train_epoch(model, optimizer, torch.arange(len(images)), batch_loss, batch_size=batch_size, rng=order,
                    device=device, progress=progress, desc=f"classifier epoch {epoch + 1}")
    return model.eval()


def class_probabilities(model: nn.Module, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """Softmax of the classifier's logits for ``images`` ([-1, 1] scale), (n, classes), on the CPU."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size].to(device)).softmax(1).cpu()
                          for i in range(0, len(images), batch_size)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device) -> float:
    """Share of ``images`` whose most probable class is their label."""
    return float((class_probabilities(model, images, batch_size, device).argmax(1) == labels).double().mean())
