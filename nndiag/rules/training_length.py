"""Training that stopped while the loss was still falling fast (checked once the run has ended).

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.training_length import undertrained
    >>> rows = [(s, "", "loss", 2.0 * 0.99**s) for s in range(200)]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> [(d.code, d.severity) for d in undertrained(RunView(h, finished=True), AdvisorConfig())]
    [('undertrained', 'info')]
    >>> undertrained(RunView(h), AdvisorConfig())  # still running: not judged
    []
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.curves import relative_drop
from nndiag.rules.loss_view import LossThresholds, g, loss_curve
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class UndertrainedThresholds(LossThresholds):
    """When the loss at the end of a run counts as still falling fast."""

    undertrained_drop: float = 0.1  # the loss fell >= 10% over the last stretch of the run (first vs last third) ...
    undertrained_frac: float = 0.2  # ... the last 20% of the run (at least undertrained_min_steps), by >= 3 standard
    # errors of that drop
    undertrained_min_steps: int = 20  # the shortest stretch judged (a run needs twice as many steps)


@rule(
    "undertrained",
    requires=(Q.LOSS,),
    severity="info",
    rank=366,
    thresholds=UndertrainedThresholds,
    summary="at the end of the run the training loss still fell ≥ 10% over its last 20% (≥ 20 steps), well above "
    "its noise: training stopped too early",
)
def undertrained(view: RunView, t: UndertrainedThresholds) -> list[Diagnosis]:
    """The run ended while its loss was still falling fast (judged only on a finished run's view)."""
    if not view.finished:
        return []
    c = loss_curve(view, t)
    if c is None:
        return []
    n = len(c.values)
    window = max(t.undertrained_min_steps, int(t.undertrained_frac * n))
    if n < 2 * window:
        return []
    tail = c.values[-window:]
    drop = relative_drop(tail)
    se = c.noise * math.sqrt(3 * math.pi / window)
    level = float(tail[-max(window // 3, 1) :].mean())
    if not (drop >= t.undertrained_drop and drop > 3 * se and level > c.converged):
        return []
    first_step = int(c.steps[-window])
    return [
        Diagnosis(
            code="undertrained",
            severity="info",
            step=first_step,
            layer=None,
            message=(
                f"Training stopped while the loss was still falling fast: it fell {drop:.0%} over the last {window} "
                f"steps, to {g(level)}."
            ),
            evidence={"relative_drop": drop, "window": float(window), "loss": level, "noise": c.noise},
            suggestions=[
                "Train longer (more epochs or steps); keep the learning-rate schedule's end at the new length.",
                "If time is fixed, try a larger learning rate or batch size (check the update/weight ratio, ~1e-3).",
            ],
        )
    ]
