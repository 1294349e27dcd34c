"""Learning rate too low: tiny update/weight ratios with a loss that barely moves or only creeps.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.lr_low import lr_too_low
    >>> rows = [(s, "", "loss", 2.3) for s in range(80)]
    >>> rows += [(s, "fc.weight", "update_ratio", 1e-7) for s in range(0, 80, 10)]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> view = RunView(h, {"params": {"fc.weight": {"shape": [4, 8]}}})
    >>> [(d.code, d.severity) for d in lr_too_low(view, AdvisorConfig())]
    [('lr_too_low', 'warning')]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.curves import relative_drop
from nndiag.rules.loss_view import loss_curve
from nndiag.rules.ratios import UpdateRatioThresholds, current_lr, lr_text, ratio_checks, streak_from, weight_matrices
from nndiag.rules.registry import rule
from nndiag.rules.task_view import task_of
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class LrLowThresholds(UpdateRatioThresholds):
    """When updates count as far too small."""

    update_ratio_low: float = 1e-5  # even the largest ratio over the weight matrices below this = far too small
    # (research checker: log10 < -4 is 1e-4; another: lr * ratio < 1e-5)
    lr_low_loss_drop: float = 0.05  # too low: the loss also moved by less than 5% (research: < 5% drop per check)
    lr_low_grad_ratio: float = 1e-4  # ... while the gradients are not vanishing: median ||g||/||w|| above this
    # (below it, the tiny updates come from the gradients, not the learning rate: see vanishing_gradients)
    lr_decay_factor: float = 10.0  # a scheduler that lowered the lr >= 10x from its peak makes tiny updates by design
    lr_warmup_rise: float = 1.1  # ... as does a warmup still raising it (by > 10% over the flat window)
    lr_creep_factor: float = 10.0  # also too low: the median weight-matrix ratio below this x update_ratio_low
    # and the largest below update_ratio_healthy
    # (1e-4: 10x under the lecture's 1e-3; Adam at lr 1e-5 on O(0.1) weights gives ~5e-5) ...
    lr_creep_drop: float = 0.25  # ... while the loss creeps: it fell < 25% over the last window and stays above ...
    lr_creep_level: float = 0.5  # ... half of the constant-prediction loss (or of its start level, if unknown)


@rule(
    "lr_too_low",
    requires=(Q.LOSS, Q.UPDATE_RATIO),
    rank=160,
    explained_by=("vanishing_gradients", "activation_collapse", "lr_too_high"),
    thresholds=LrLowThresholds,
    summary="even the largest weight-matrix ratio ≤ `update_ratio_low` (1e-5) at 3 logging steps and the loss "
    "moved < 5% over the last 50 steps (or 25% of the run), or the median ratio < 1e-4 (the largest < 1e-3) while "
    "the loss creeps "
    "(fell < 25%, still above half the constant-prediction loss or its start); silent when converged, when "
    "gradients vanish (median ‖g‖/‖w‖ < 1e-4), after a scheduler cut the lr ≥ 10x, or during warmup",
)
def lr_too_low(view: RunView, t: LrLowThresholds) -> list[Diagnosis]:
    """Update/weight ratio <= ``update_ratio_low`` in every weight matrix, and a loss that barely moves.

    The largest ratio over the weight matrices is used: when only some layers update slowly the
    cause is the gradient flow (vanishing gradients, saturation), not the step size. Sustained
    over ``update_ratio_checks`` logging steps; the loss changed by less than
    ``lr_low_loss_drop`` over the last ``flat_window`` steps and has not converged. Not reported
    when the gradients themselves vanish (||g||/||w|| below ``lr_low_grad_ratio``: a gradient
    problem), nor while a scheduler has decayed the rate ``lr_decay_factor``-fold from its peak or a
    warmup is still raising it (small updates by design).
    """
    ratios = ratio_checks(view, "max")
    k = t.update_ratio_checks
    curve = loss_curve(view, t)
    if len(ratios) < k or curve is None or len(curve.values) < t.flat_window:
        return []
    recent = float(ratios.iloc[-k:].median())
    win = curve.values[-max(t.flat_window, int(t.flat_window_frac * len(curve.values))) :]
    level = float(np.median(win))
    if level <= curve.converged:
        return []
    drop = relative_drop(win)
    # (a) even the largest ratio is tiny and the loss barely moves, or (b) the median ratio is 10x under
    # healthy while the loss creeps down from a high level (Adam at 1e-5)
    medians = ratio_checks(view)
    baseline = task_of(view).baseline
    creep = float(medians.iloc[-k:].median()) if len(medians) >= k else math.nan
    flat = recent <= t.update_ratio_low and abs(drop) < t.lr_low_loss_drop
    creeping = (
        creep < t.lr_creep_factor * t.update_ratio_low
        and recent < t.update_ratio_healthy  # every weight matrix slow (a few slow layers: gradient flow)
        and drop < t.lr_creep_drop
        and level >= t.lr_creep_level * (baseline if baseline is not None else curve.start)
    )
    if not (flat or creeping):
        return []
    if creeping and not flat:
        recent = creep
    grad = _grad_weight_ratio(view, [int(s) for s in ratios.index[-k:]])
    if grad is not None and grad < t.lr_low_grad_ratio:
        return []
    lr = current_lr(view)
    if _lr_scheduled(view, t):
        return []
    onset = (
        streak_from(ratios <= t.update_ratio_low)
        if flat
        else streak_from(medians < t.lr_creep_factor * t.update_ratio_low)
    )
    onset = int(ratios.index[-k]) if onset is None else onset
    evidence = {"update_ratio": recent, "healthy_ratio": t.update_ratio_healthy, "loss_change": -drop}
    if grad is not None:
        evidence["grad_weight_ratio"] = grad
    if lr is not None:
        evidence["lr"] = lr
    change = f"only {abs(drop):.1%}" if abs(drop) >= 0.001 else "under 0.1%"
    return [
        Diagnosis(
            code="lr_too_low",
            severity="warning",
            step=onset,
            layer=None,
            message=(
                f"Learning rate too low: the weights move by {'at most' if flat else 'a median'} {recent:.2g} of "
                "their norm per step "
                f"(healthy: ~{t.update_ratio_healthy:.0e}) and the loss changed by {change} over "
                f"the last {len(win)} steps."
            ),
            evidence=evidence,
            suggestions=[
                f"Raise the learning rate 3-10x{lr_text(lr, 3, 10, up=True)} and watch the ratio approach ~1e-3.",
                "Run a learning-rate range test (sweep it in log space, e.g. 1e-5 to 1, over a few hundred steps).",
                "With SGD, add momentum (0.9) or switch to Adam (lr ~1e-3).",
            ],
        )
    ]


def _grad_weight_ratio(view: RunView, steps: list[int]) -> float | None:
    """Median ||g|| / ||w|| over the weight matrices at ``steps``, or ``None`` if not recorded."""
    g, w = view.matrix(Q.GRAD_NORM), view.matrix(Q.WEIGHT_NORM)
    if g.empty or w.empty:
        return None
    cols = [c for c in weight_matrices(view, [str(c) for c in g.columns]) if c in w.columns]
    rows = [s for s in steps if s in g.index and s in w.index]
    if not cols or not rows:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (g.loc[rows, cols] / w.loc[rows, cols]).to_numpy(dtype=float)
    r = r[np.isfinite(r)]
    return float(np.median(r)) if r.size else None


def _lr_scheduled(view: RunView, t: LrLowThresholds) -> bool:
    """Whether a scheduler has decayed the rate far below its peak, or a warmup is still raising it."""
    m = view.matrix(Q.LR)
    if m.empty:
        return False
    top = m.max(axis=1, skipna=True).dropna()
    top = top[top > 0]
    if top.empty:
        return False
    now = float(top.iloc[-1])
    if now * t.lr_decay_factor <= float(top.max()):
        return True
    earlier = top[top.index <= view.last_step - t.flat_window]
    before = float(earlier.iloc[-1]) if len(earlier) else float(top.iloc[0])
    return now > t.lr_warmup_rise * before and not math.isclose(now, before)
