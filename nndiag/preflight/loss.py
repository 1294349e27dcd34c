"""Recognising softmax cross-entropy losses, inferring their number of classes, reading a loss value.

Softmax cross-entropy (``nn.CrossEntropyLoss``, ``F.cross_entropy``) and negative log-likelihood
on log-probabilities (``nn.NLLLoss``, ``F.nll_loss``) start at ln C for an untrained C-way
classifier (the lecture's first sanity check). Their class dimension is dim 1 of the output
(``(N, C)`` or ``(N, C, d1, ...)``), as PyTorch defines it.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.preflight.loss import classes_of, is_classification_loss
    >>> is_classification_loss(nn.CrossEntropyLoss()), is_classification_loss(nn.MSELoss())
    (True, False)
    >>> classes_of(torch.zeros(8, 10), torch.zeros(8, dtype=torch.long))
    10
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

LossFn = Callable[[Any, Any], Any]

_CLASSIFICATION_MODULES = (nn.CrossEntropyLoss, nn.NLLLoss)
_CLASSIFICATION_FUNCTIONS = (F.cross_entropy, F.nll_loss)


def is_classification_loss(loss_fn: LossFn | None) -> bool:
    """Whether ``loss_fn`` is softmax cross-entropy or NLL (also through ``functools.partial``)."""
    while isinstance(loss_fn, functools.partial):
        loss_fn = loss_fn.func
    return isinstance(loss_fn, _CLASSIFICATION_MODULES) or any(loss_fn is f for f in _CLASSIFICATION_FUNCTIONS)


def classes_of(output: Any, target: Any) -> int | None:
    """C of a cross-entropy over class indices: dim 1 of the output when the target holds integer labels.

    Targets holding class probabilities (same shape as the output) give C too; anything else ``None``.
    """
    if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor) or output.dim() < 2:
        return None
    labels = not target.is_floating_point() and target.dim() == output.dim() - 1
    probabilities = target.is_floating_point() and target.shape == output.shape
    classes = int(output.shape[1])
    return classes if (labels or probabilities) and classes >= 2 else None


def loss_value(loss: Any) -> float:
    """A loss as a Python float (the mean of a non-scalar loss tensor; NaN when it cannot be read).

    Example:
        >>> loss_value(torch.tensor([1.0, 3.0])), loss_value("?")
        (2.0, nan)
    """
    if isinstance(loss, torch.Tensor):
        return float(loss.detach().float().mean()) if loss.numel() else math.nan
    try:
        return float(loss)
    except (TypeError, ValueError):
        return math.nan
