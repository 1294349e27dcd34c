"""Fit rules: overfitting (validation loss stalls or rises while training improves) and underfitting.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.fit import overfitting
    >>> rows = [(s, "", "loss", 2.0 * 0.98**s) for s in range(200)]
    >>> rows += [(s, "", "val_loss", 1.0 + abs(s - 60) / 100) for s in range(19, 200, 20)]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> [(d.code, d.step) for d in overfitting(RunView(h), AdvisorConfig())]
    [('overfitting', 79)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.loss_view import LossThresholds, divergence, g, loss_curve, oscillation, plateau
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView, finite


@dataclass(frozen=True)
class GapThresholds(LossThresholds):
    """The generalisation gap that counts as large."""

    overfit_gap: float = 0.1  # (val - train) / train above this (research checker)


@dataclass(frozen=True)
class OverfittingThresholds(GapThresholds):
    """When the validation loss counts as stalled or rising while the training loss falls."""

    overfit_patience: int = 3  # ... for this many validation checks, with no new best validation loss
    overfit_val_rise: float = 0.05  # or validation loss this far (5%) above its best (early-stopping practice)
    overfit_train_drop: float = 0.05  # ... while the training loss fell by at least this much (lecture: val rising
    # while train falls); a converged run with a constant generalisation gap is not flagged


@dataclass(frozen=True)
class UnderfittingThresholds(GapThresholds):
    """When a flat, high training loss with no gap counts as underfitting."""

    underfit_loss_frac: float = 0.8  # train loss still above this fraction of ln C (or of its start), flat, no gap


@dataclass(frozen=True)
class _ValPoint:
    step: int
    val: float
    train: float  # median training loss over the `span` steps up to this validation


def _val_points(view: RunView, t: LossThresholds) -> tuple[list[_ValPoint], float]:
    """Validation losses with the training loss of the same period, and that training loss's relative error.

    The training loss at a validation step is the median over the steps since the previous
    validation, or over the smoothing window if longer (noisy small-batch losses need it).
    """
    c = loss_curve(view, t)
    val = finite(view.series(Q.VAL_LOSS))
    if c is None or val.empty:
        return [], math.inf
    vsteps = val.index.to_numpy().astype(int)
    interval = int(np.median(np.diff(vsteps))) if len(vsteps) > 1 else int(vsteps[0]) + 1
    span = max(interval, c.smooth_window)
    points: list[_ValPoint] = []
    for step, v in zip(vsteps, val.to_numpy(dtype=float), strict=True):
        sel = c.values[(c.steps > step - span) & (c.steps <= step)]
        if len(sel):
            points.append(_ValPoint(int(step), float(v), float(np.median(sel))))
    return points, math.sqrt(math.pi / 2) * c.noise / math.sqrt(span)


@rule(
    "overfitting",
    requires=(Q.LOSS, Q.VAL_LOSS),
    rank=350,
    thresholds=OverfittingThresholds,
    summary="validation loss (medians over 3 checks) has had no new best for 3 checks while the training loss "
    "fell ≥ 5%, and it rose ≥ 5% above its best or the gap (val − train)/train stayed > 0.1",  # noqa: RUF001
)
def overfitting(view: RunView, t: OverfittingThresholds) -> list[Diagnosis]:
    """Validation loss stalled or rising while the training loss keeps falling.

    Validation losses are compared as medians over ``k = overfit_patience`` consecutive checks
    (they are noisy too). Holds when the best check, inside the best such window, is at least k
    checks old; the training loss (median over the same windows) fell since then by
    ``overfit_train_drop`` and by more than its noise (two standard errors of a difference of two
    medians); the validation loss has not converged; and either the last window is
    ``overfit_val_rise`` above the best one, or the relative gap (val - train) / train exceeded
    ``overfit_gap`` at each of the last k checks. A converged run with a constant generalisation
    gap is silent.
    """
    points, error = _val_points(view, t)
    k = t.overfit_patience
    c = loss_curve(view, t)
    if c is None or len(points) < k + 1:
        return []
    vals = np.array([p.val for p in points])
    trains = np.array([p.train for p in points])
    if not (trains > 0).all():
        return []
    # Validation losses are noisy too: compare medians over k consecutive validation checks.
    windows = np.array([np.median(vals[i : i + k]) for i in range(len(points) - k + 1)])
    j = int(np.argmin(windows))  # the best window: checks j .. j+k-1
    best_i = j + int(np.argmin(vals[j : j + k]))  # the best check, in it
    if len(points) - 1 - best_i < k:  # patience: k checks since the best one without a better window
        return []
    best_val, recent = float(windows[j]), float(windows[-1])
    best = points[best_i]
    last = points[-1]
    if recent <= c.converged:
        return []
    # Training level over the best window vs the last k checks, with its noise (two standard errors
    # of a difference of two medians), so that a converged run does not look like it still fits.
    before, after = float(np.median(trains[j : j + k])), float(np.median(trains[-k:]))
    drop = 1.0 - after / before
    if drop < max(t.overfit_train_drop, 2 * math.sqrt(2) * error):
        return []
    gaps = [float(g) for g in (vals[-k:] - trains[-k:]) / trains[-k:]]
    rising = recent >= (1.0 + t.overfit_val_rise) * best_val
    if not rising and min(gaps) <= t.overfit_gap:
        return []
    onset = points[best_i + 1].step
    if rising:
        message = (
            f"Overfitting: the validation loss rose from {g(best_val)} around step {best.step} to {g(recent)} "
            f"while the training loss fell from {g(before)} to {g(after)}."
        )
    else:
        message = (
            f"Overfitting: the validation loss {g(last.val)} is {gaps[-1]:.0%} above the training loss "
            f"{g(last.train)} and has not improved for {len(points) - 1 - best_i} validation checks "
            f"while the training loss kept falling."
        )
    return [
        Diagnosis(
            code="overfitting",
            severity="warning",
            step=onset,
            layer=None,
            message=message,
            evidence={
                "val_loss": recent,
                "best_val_loss": best_val,
                "best_val_step": float(best.step),
                "train_loss": after,
                "train_loss_at_best": before,
                "gap": gaps[-1],
            },
            suggestions=[
                "Get more training data or add data augmentation.",
                "Add regularisation: weight decay (e.g. 1e-4 to 5e-4) and dropout (~0.5 on hidden units).",
                f"Use early stopping: keep the checkpoint of step {best.step}, where the validation loss was best.",
                "Reduce the model's capacity if the gap stays large.",
            ],
        )
    ]


@rule(
    "underfitting",
    requires=(Q.LOSS, Q.VAL_LOSS),
    severity="info",
    rank=360,
    explained_by=("lr_too_low", "weights_not_updating", "vanishing_gradients", "activation_collapse"),
    thresholds=UnderfittingThresholds,
    summary="with `val_loss`: training loss flat at ≥ 80% of ln C (or of its start), with a gap ≤ 0.1",
)
def underfitting(view: RunView, t: UnderfittingThresholds) -> list[Diagnosis]:
    """Training loss flat and high (>= ``underfit_loss_frac`` of ln C, or of its start) with no train/val gap."""
    p = plateau(view, t)
    c = loss_curve(view, t)
    points, _ = _val_points(view, t)
    if p is None or c is None or not points or divergence(view, t) is not None:
        return []
    if oscillation(view, t) is not None:
        return []
    ref = c.chance if c.chance is not None else c.start
    if ref <= 0 or p.level < t.underfit_loss_frac * ref:
        return []
    last = points[-1]
    gap = (last.val - p.level) / p.level
    if gap > t.overfit_gap:
        return []
    ref_text = f"the chance level {ref:.3g}" if c.chance is not None else f"its start {g(ref)}"
    return [
        Diagnosis(
            code="underfitting",
            severity="info",
            step=p.onset,
            layer=None,
            message=(
                f"Underfitting: the training loss has stalled at {g(p.level)} ({p.level / ref:.0%} of {ref_text}) "
                f"and the validation loss {g(last.val)} is no higher, so the model fits the training data poorly."
            ),
            evidence={"train_loss": p.level, "val_loss": last.val, "reference_loss": ref, "gap": gap},
            suggestions=[
                "Add capacity: wider or deeper layers (then check the gap again).",
                "Train longer, or with a better-tuned learning rate (run a range test).",
                "Lower the regularisation (weight decay, dropout) if any.",
            ],
        )
    ]
