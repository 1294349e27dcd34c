"""Overfit one small batch, the lecture's second sanity check: can the model and the loss learn at all.

A deep copy of the model is trained with Adam on the first ``samples`` samples of the batch,
regularisation off (dropout probabilities set to 0 in the copy; Adam without weight decay), for
at most ``steps`` steps or ``max_seconds`` seconds, stopping as soon as the target is met. It
passes when the loss falls to ``rel_target`` times its initial value and, for a softmax
classifier, below ``abs_target`` in absolute terms (the lecture: "overfit to ~0 loss"). The
user's model is never touched.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.preflight.overfit import OverfitConfig, check_overfit
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 4))
    >>> x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
    >>> result = check_overfit(model, x, y, nn.functional.cross_entropy, OverfitConfig(), classification=True)
    >>> result.passed, result.final_loss < 0.1
    (True, True)
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nndiag.preflight.batch import batch_len, first_rows
from nndiag.preflight.loss import LossFn, loss_value


@dataclass(frozen=True)
class OverfitConfig:
    """Settings of the overfit-one-batch check (each bound keeps it short)."""

    steps: int = 500  # most Adam steps (stops when met): MLPs of width 128/32/8 need ~90/190/430 steps on
    # 16 random labels at lr 1e-3; nndiag's demo CNN ~110, its LSTM ~60
    lr: float = 1e-3  # Adam's default learning rate (a safe memorisation rate for most models)
    samples: int = 16  # the lecture overfits "a tiny subset (e.g. 20 examples)"
    rel_target: float = 0.1  # pass: the loss fell to 10% of its initial value ...
    abs_target: float = 0.1  # ... and, for softmax classifiers, below 0.1 (~90% probability on the true class)
    max_seconds: float = 30.0  # wall-clock bound, whatever the model size

    def __post_init__(self) -> None:
        for name in ("steps", "lr", "samples", "rel_target", "abs_target", "max_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"OverfitConfig.{name} must be a positive number, got {value!r}.")
        if not isinstance(self.steps, int) or not isinstance(self.samples, int):
            raise ValueError("OverfitConfig.steps and OverfitConfig.samples must be integers.")


@dataclass(frozen=True)
class OverfitResult:
    """Outcome of the overfit-one-batch check.

    Attributes:
        passed: the loss reached the target.
        steps: optimizer steps taken.
        samples: samples trained on.
        initial_loss: loss before the first step.
        final_loss: loss after the last step.
        best_loss: lowest loss seen.
        target: the loss the check had to reach.
        seconds: wall-clock time of the check.
        message: what happened and, on failure, what to check.
        losses: the loss at every step (``losses[0]`` is the initial loss).
    """

    passed: bool
    steps: int
    samples: int
    initial_loss: float
    final_loss: float
    best_loss: float
    target: float
    seconds: float
    message: str
    losses: list[float] = field(default_factory=list)


def check_overfit(
    model: nn.Module,
    x: Any,
    y: Any,
    loss_fn: LossFn,
    config: OverfitConfig | None = None,
    classification: bool = False,
) -> OverfitResult:
    """Train a copy of ``model`` on the first ``config.samples`` samples of ``(x, y)``; see the module docstring.

    Raises:
        ValueError: when the model cannot be deep-copied.
    """
    cfg = config or OverfitConfig()
    start = time.perf_counter()
    try:
        net = copy.deepcopy(model)
    except Exception as exc:
        raise ValueError(
            f"the overfit check trains a copy of the model, but copy.deepcopy failed ({type(exc).__name__}: {exc}); "
            "pass overfit=False."
        ) from exc
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0  # regularisation off (the lecture), in the copy only
    xs, ys = first_rows(x, cfg.samples), first_rows(y, cfg.samples)
    n = batch_len(xs) or 0
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        return _result(False, [], n, math.nan, start, "The model has no trainable parameter (requires_grad=False).")
    opt = torch.optim.Adam(params, lr=cfg.lr)
    losses: list[float] = []
    target = math.nan
    steps = 0
    for steps in range(cfg.steps + 1):
        loss = loss_fn(net(xs), ys)
        value = loss_value(loss)
        losses.append(value)
        if steps == 0:
            target = cfg.rel_target * value
            if classification:
                target = min(target, cfg.abs_target)
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                return _result(False, losses, n, target, start, _NO_GRAD)
        if not math.isfinite(value) or value <= target or steps == cfg.steps:
            break
        if time.perf_counter() - start > cfg.max_seconds:
            break
        opt.zero_grad(set_to_none=True)
        (loss if loss.numel() == 1 else loss.mean()).backward()
        opt.step()
    return _result(losses[-1] <= target, losses, n, target, start, None, cfg)


_NO_GRAD = (
    "The loss does not depend on any trainable parameter (it has no gradient): look for .detach(), "
    "torch.no_grad() or requires_grad=False between the parameters and the loss."
)


def _result(
    passed: bool,
    losses: list[float],
    samples: int,
    target: float,
    start: float,
    message: str | None,
    cfg: OverfitConfig | None = None,
) -> OverfitResult:
    seconds = time.perf_counter() - start
    first = losses[0] if losses else math.nan
    last = losses[-1] if losses else math.nan
    finite = [v for v in losses if math.isfinite(v)]
    best = min(finite) if finite else math.nan
    steps = max(len(losses) - 1, 0)
    if message is None:
        message = _message(passed, losses, samples, target, seconds, cfg or OverfitConfig())
    return OverfitResult(passed, steps, samples, first, last, best, target, seconds, message, losses)


def _message(passed: bool, losses: list[float], samples: int, target: float, seconds: float, cfg: OverfitConfig) -> str:
    first, last, steps = losses[0], losses[-1], len(losses) - 1
    went = f"the loss went from {first:.3g} to {last:.3g} in {steps} steps ({seconds:.1f} s)"
    if passed:
        return f"The model can fit {samples} samples: {went}."
    if not math.isfinite(last):
        return (
            f"The loss became NaN/Inf after {steps} steps while fitting {samples} samples at Adam lr {cfg.lr:g}: "
            "look for log/division of values that reach 0, or lower the learning rate."
        )
    if steps < cfg.steps:
        return (
            f"The check ran out of time (max_seconds={cfg.max_seconds:g}) before fitting {samples} samples: {went}. "
            "Raise OverfitConfig(max_seconds=...) or pass a smaller batch."
        )
    if abs(last - first) <= 1e-6 * max(abs(first), 1e-12):
        return (
            f"The loss did not change ({first:.3g}) in {steps} steps on {samples} samples: no gradient reaches the "
            "parameters, or the output does not depend on them (frozen layers, .detach(), a dead network)."
        )
    tail = losses[-max(2, len(losses) // 5) :]
    if tail[-1] < 0.9 * tail[0]:  # still falling fast: slow rather than broken
        return (
            f"The model did not fit {samples} samples in time: {went}, still above the target {target:.3g} but "
            "still falling; more steps (OverfitConfig(steps=...)) or a higher lr would probably get there."
        )
    return (
        f"The model cannot fit {samples} samples: {went}, still above the target {target:.3g}. Check "
        "that the output depends on the input (preprocessing bugs, a dead network: see dead_units), that the "
        "targets match the outputs (class indices, shapes) and that the loss suits the task."
    )
