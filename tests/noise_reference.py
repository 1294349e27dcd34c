"""Brute-force gradient noise scale of a small model on a finite data set (per-sample gradients, ``torch.func``).

Sampling a batch of ``B`` samples with replacement from ``N`` gives ``E|G_B|² = |G|² + tr(Σ)/B`` exactly, with
``G`` the mean of the ``N`` per-sample gradients and ``Σ`` their population covariance (normalised by ``N``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

D = 8


def problem(n: int = 512, noise: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear-regression data set ``y = x w + noise`` (the same on every rank for a given seed)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    w = torch.randn(D, generator=g)
    return x, x @ w + noise * torch.randn(n, generator=g)


def model(seed: int = 1) -> nn.Module:
    """A small MLP (two linear layers, tanh)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1))


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a ``[B, 1]`` output against ``[B]`` targets."""
    return ((out.squeeze(-1) - y) ** 2).mean()


def exact(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(|G|², tr Σ)`` over the whole data set, from every per-sample gradient."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(net, p, (xi[None],)), yi[None])

    per = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([g.reshape(len(x), -1) for g in per.values()], dim=1).double()
    mean = flat.mean(0)
    return float(mean.square().sum()), float((flat - mean).square().sum(1).mean())
