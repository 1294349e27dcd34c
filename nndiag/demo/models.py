"""Tiny models and synthetic data for examples, tests and ``nndiag demo``.

Nothing is downloaded: data are generated from a seed.

Example:
    >>> from nndiag.demo.models import mlp, blobs
    >>> x, y = blobs(n=64, features=20, classes=4, seed=0)
    >>> mlp(20, 4)(x).shape
    torch.Size([64, 4])
"""

from __future__ import annotations

import torch
from torch import nn


def blobs(n: int = 1024, features: int = 20, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable classification problem: Gaussian blobs around random class centres (standardised)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=gen) * 2.0
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centres[y] + torch.randn(n, features, generator=gen)
    x = (x - x.mean(0)) / x.std(0)
    return x, y


def images(n: int = 256, classes: int = 4, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic 3-channel images whose class sets a brightness pattern (learnable by a small CNN)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    patterns = torch.randn(classes, 3, size, size, generator=gen)
    x = patterns[y] + 0.5 * torch.randn(n, 3, size, size, generator=gen)
    return x, y


def sequences(n: int = 256, length: int = 12, vocab: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences labelled by whether token 0 occurs more often than token 1."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=gen)
    y = ((x == 0).sum(1) > (x == 1).sum(1)).long()
    return x, y


def mlp(
    features: int = 20, classes: int = 4, hidden: int = 64, depth: int = 3, act: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """A plain MLP: ``depth`` hidden Linear + activation blocks, then a Linear classifier."""
    layers: list[nn.Module] = []
    width = features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), act()]
        width = hidden
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def cnn_bn(classes: int = 4, channels: int = 16) -> nn.Sequential:
    """A small CNN with BatchNorm for 3x16x16 inputs."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.BatchNorm2d(2 * channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * channels, classes),
    )


class LSTMClassifier(nn.Module):
    """Embedding -> LSTM -> Linear on the last hidden state (its LSTM returns a tuple)."""

    def __init__(self, vocab: int = 16, classes: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])
