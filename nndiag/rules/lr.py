"""Learning-rate rules: update/weight ratios far too large (with an unstable loss) or far too small.

The lecture's yardstick is the ratio of the update to the weight magnitude per parameter tensor,
``update_ratio`` = ||w_after - w_before|| / ||w_before||: about 1e-3 is healthy. Rules take the
median over the trainable weight matrices (biases, often zero-initialised, are left out) at each
logging step, and require it over ``update_ratio_checks`` logging steps. A high ratio alone is not
an error (Adam at lr 1e-3 routinely gives ~1e-2, and a fast but stable run may briefly reach
0.1); it must come with a loss that diverges, oscillates, turns NaN, or a network that collapsed
to a constant prediction.

Example:
    >>> import pandas as pd
    >>> from nndiag.rules.config import AdvisorConfig
    >>> from nndiag.rules.lr import lr_too_high
    >>> from nndiag.rules.view import RunView
    >>> rows = [(s, "", "loss", v) for s, v in enumerate([2.3, 2.2, 3.1, 40.0, float("nan")])]
    >>> rows += [(s, "fc.weight", "update_ratio", 0.5) for s in range(4)]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> view = RunView(h, {"params": {"fc.weight": {"shape": [4, 8]}}})
    >>> [(d.code, d.step, d.severity) for d in lr_too_high(view, AdvisorConfig())]
    [('lr_too_high', 0, 'error')]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.baseline import BaselineThresholds, at_baseline, output_spread_ratio
from nndiag.rules.curves import relative_drop
from nndiag.rules.loss_view import LossThresholds, divergence, loss_curve, oscillation
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class UpdateRatioThresholds(LossThresholds):
    """The update/weight ratios the learning-rate rules compare against (the loss analysis included)."""

    update_ratio_healthy: float = 1e-3  # the lecture's healthy update/weight ratio
    update_ratio_checks: int = 3  # ... median over weight matrices, sustained over this many logging steps


@dataclass(frozen=True)
class LrHighThresholds(UpdateRatioThresholds, BaselineThresholds):
    """When updates count as far too large."""

    update_ratio_high: float = 1e-1  # sustained median ratio above this = far too large (research checker: log10 > -1)
    lr_collapse_dead_frac: float = 0.99  # too high: a ReLU layer this dead (alive at step 0) passes only a constant
    lr_collapse_std_frac: float = 1e-4  # ... or a layer whose output std fell below this fraction of its step-0 std


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
    lr_creep_ratio: float = 1e-4  # also too low: the median weight-matrix ratio at most this (10x under the lecture's
    # 1e-3; Adam at lr 1e-5 on O(0.1) weights gives ~1e-4) ...
    lr_creep_drop: float = 0.25  # ... while the loss creeps: it fell 5-25% over the last window and stays above ...
    lr_creep_level: float = 0.5  # ... half of its start level


def weight_matrices(view: RunView, names: list[str]) -> list[str]:
    """The trainable weight tensors (2 or more dimensions) among ``names``.

    Without parameter facts, names ending in ``weight`` are taken.
    """
    out = []
    for name in names:
        info = view.param(name)
        if info:
            shape = info.get("shape") or []
            if len(shape) < 2 or info.get("trainable") is False or info.get("in_optimizer") is False:
                continue
        elif not name.endswith("weight"):
            continue
        out.append(name)
    return out


def ratio_checks(view: RunView, how: str = "median") -> pd.Series:
    """Update/weight ratio over the weight matrices at each logging step: their median (or ``"max"``).

    Only finite ratios count (a zero weight tensor has none); steps with none are dropped.
    """
    m = view.matrix("update_ratio")
    if m.empty:
        return pd.Series(dtype=float)
    cols = weight_matrices(view, [str(c) for c in m.columns])
    if not cols:
        return pd.Series(dtype=float)
    sub = m[cols].where(np.isfinite(m[cols]))
    agg = sub.max(axis=1, skipna=True) if how == "max" else sub.median(axis=1, skipna=True)
    return agg.dropna()


def _streak_from(mask: pd.Series) -> int | None:
    """Index label where the final run of ``True`` begins, or ``None`` if the last entry is ``False``."""
    if mask.empty or not bool(mask.iloc[-1]):
        return None
    values = mask.to_numpy(dtype=bool)
    false = np.flatnonzero(~values)
    return int(mask.index[false[-1] + 1 if len(false) else 0])


def _last_streak_start(mask: pd.Series) -> int | None:
    """Index label where the last run of ``True`` begins (trailing ``False`` ignored), or ``None``."""
    values = mask.to_numpy(dtype=bool)
    true = np.flatnonzero(values)
    if not len(true):
        return None
    return _streak_from(mask.iloc[: int(true[-1]) + 1])


def _collapse(view: RunView, t: LrHighThresholds) -> tuple[str, int, str] | None:
    """(layer, onset, what) of a layer that now passes only a constant but did not at step 0."""
    dead = view.matrix("dead_frac")
    for layer in dead.columns:
        col = dead[layer].dropna()
        if len(col) < 2 or col.iloc[0] >= t.lr_collapse_dead_frac:
            continue
        start = _streak_from(col >= t.lr_collapse_dead_frac)
        if start is not None:
            return str(layer), start, f"{col.iloc[-1]:.0%} of the units of {layer} died"
    std = view.matrix("act_std")
    for layer in std.columns:
        if layer == "input":
            continue
        col = std[layer].dropna()
        if len(col) < 2 or not col.iloc[0] > 0:
            continue
        start = _streak_from(col <= t.lr_collapse_std_frac * col.iloc[0])
        if start is not None:
            return str(layer), start, f"the output of {layer} became constant"
    return None


def _collapsed_in_training(view: RunView, t: LrHighThresholds) -> bool:
    """Whether the network was alive at the start and now predicts (nearly) a constant.

    Alive: no ReLU layer fully dead at the first logging step. Constant: the output's spread across
    samples fell below 5% of its first value (when recorded; else the dead check alone decides).
    """
    dead = view.matrix(Q.DEAD_FRAC)
    if not dead.empty and float(dead.iloc[0].max()) >= t.lr_collapse_dead_frac:
        return False  # dead from initialisation: not the learning rate's doing
    spread = output_spread_ratio(view)
    return spread is None or spread < 0.05


def _first_nonfinite_loss(view: RunView) -> int | None:
    """First step with a NaN/Inf loss."""
    loss = view.series("loss")
    bad = loss.index[~np.isfinite(loss.to_numpy(dtype=float))]
    return int(bad[0]) if len(bad) else None


def _current_lr(view: RunView) -> float | None:
    """The largest learning rate over the optimizer groups at the last logging step."""
    m = view.matrix("lr")
    if m.empty:
        return None
    last = m.iloc[-1].dropna()
    return float(last.max()) if len(last) else None


def _lr_text(lr: float | None, factor_lo: float, factor_hi: float, up: bool) -> str:
    if lr is None or not lr > 0:
        return ""
    a, b = (lr * factor_lo, lr * factor_hi) if up else (lr / factor_hi, lr / factor_lo)
    return f" (from {lr:.2g} to {a:.2g}-{b:.2g})"


@rule(
    "lr_too_high",
    requires=("loss", "update_ratio"),
    severity="error",
    rank=150,
    thresholds=LrHighThresholds,
    broken=True,
    summary="median update/weight ratio over the weight matrices ≥ `update_ratio_high` (0.1) at 3 logging steps, "
    "together with a NaN loss, divergence, oscillation, or a collapse (a ReLU layer ≥ 99% dead that was alive at "
    "step 0, an output std below 1e-4 of its step-0 value, or a flat loss at the constant-prediction baseline "
    "after huge first updates); ratios read just before the event or at its onset (Adam's ratio shrinks as "
    "weights grow)",
)
def lr_too_high(view: RunView, t: LrHighThresholds) -> list[Diagnosis]:
    """Median update/weight ratio >= ``update_ratio_high`` together with an unstable loss.

    The instability is a non-finite loss, a collapse to a constant prediction (a ReLU layer that
    died during training, a layer output that became constant), a diverging or an oscillating loss.
    The ratio is the median over ``update_ratio_checks`` logging steps: those up to a NaN loss or a
    collapse (afterwards the ratios are NaN or zero); for a diverging or oscillating loss, those
    where it began or the last ones, whichever are higher (Adam's ratio shrinks as the weights grow).
    """
    ratios = ratio_checks(view)
    k = t.update_ratio_checks
    if len(ratios) < k:
        return []
    # (event text, extra evidence, ratio windows: the ratios during the run-up to a NaN/collapse; for a
    # loss that diverges or oscillates, the ratios when it began or now, whichever is higher)
    events: list[tuple[str, dict[str, float], list[pd.Series]]] = []
    first_bad = _first_nonfinite_loss(view)
    if first_bad is not None:
        events.append((f"the loss became NaN/Inf at step {first_bad}", {}, [ratios[ratios.index <= first_bad]]))
    d = divergence(view, t)
    if d is not None:
        text = f"the loss rose from {d.min_loss:.3g} to {d.loss:.3g} over {view.last_step - d.min_step} steps"
        events.append((text, {"loss_factor": d.factor}, [ratios[ratios.index >= d.min_step].iloc[:k], ratios]))
    o = oscillation(view, t)
    if o is not None:
        text = f"the loss swings by {o.swing:.0%} from step to step without progress"
        events.append((text, {"loss_swing": o.swing}, [ratios[ratios.index >= o.onset].iloc[:k], ratios]))
    col = _collapse(view, t)
    if col is not None:
        _, step, what = col
        text = f"{what} at step {step}, so the network predicts a constant"
        events.append((text, {}, [ratios[ratios.index <= step]]))
    base = at_baseline(view, t) if _collapsed_in_training(view, t) else None
    if base is not None:
        level, baseline, how, _ = base
        text = (
            f"the network collapsed to a constant prediction: the loss rests at {level:.3g}, the {baseline:.3g} of "
            f"{how}"
        )
        events.append((text, {"baseline_loss": baseline}, [ratios.iloc[:k]]))
    for text, extra, windows in events:
        tails = [w.iloc[-k:] for w in windows if len(w) >= k]
        if not tails:
            continue
        window = max(tails, key=lambda w: float(w.median()))
        recent = float(window.median())
        if not recent >= t.update_ratio_high:
            continue
        onset = _last_streak_start(ratios[ratios.index <= window.index[-1]] >= t.update_ratio_high)
        onset = int(window.index[0]) if onset is None else onset
        now = window.index[-1] == ratios.index[-1]
        when = "is" if now else "was"
        at = "" if now else f" at steps {window.index[0]}-{window.index[-1]}"
        lr = _current_lr(view)
        evidence = {"update_ratio": recent, "healthy_ratio": t.update_ratio_healthy, **extra}
        if lr is not None:
            evidence["lr"] = lr
        return [
            Diagnosis(
                code="lr_too_high",
                severity="error",
                step=onset,
                layer=None,
                message=(
                    f"Learning rate too high: the median update/weight ratio {when} {recent:.2g}{at}, "
                    f"{recent / t.update_ratio_healthy:.3g}x the healthy ~{t.update_ratio_healthy:.0e}, "
                    f"and {text}."
                ),
                evidence=evidence,
                suggestions=[
                    f"Lower the learning rate 3-10x{_lr_text(lr, 3, 10, up=False)}.",
                    "Add a learning-rate warmup (e.g. linear over the first 5% of steps).",
                    "Clip gradients (clip_grad_norm_ with max_norm=1.0, or gradient_clip_val=1.0 in Lightning).",
                    "Add normalisation layers (BatchNorm/LayerNorm): they tolerate higher learning rates.",
                ],
            )
        ]
    return []


@rule(
    "lr_too_low",
    requires=("loss", "update_ratio"),
    rank=160,
    explained_by=("vanishing_gradients", "activation_collapse"),
    thresholds=LrLowThresholds,
    summary="even the largest weight-matrix ratio ≤ `update_ratio_low` (1e-5) at 3 logging steps and the loss "
    "moved < 5% over the last 50 steps (or 25% of the run), or the median ratio ≤ 1e-4 while the loss creeps "
    "(fell 5-25%, still above half its start); silent when converged, when gradients vanish (median ‖g‖/‖w‖ < "
    "1e-4), after a scheduler cut the lr ≥ 10x, or during warmup",
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
    creep = float(medians.iloc[-k:].median()) if len(medians) >= k else math.nan
    flat = recent <= t.update_ratio_low and abs(drop) < t.lr_low_loss_drop
    creeping = (
        creep <= t.lr_creep_ratio
        and t.lr_low_loss_drop <= drop < t.lr_creep_drop
        and level >= t.lr_creep_level * curve.start
    )
    if not (flat or creeping):
        return []
    if creeping and not flat:
        recent = creep
    grad = _grad_weight_ratio(view, [int(s) for s in ratios.index[-k:]])
    if grad is not None and grad < t.lr_low_grad_ratio:
        return []
    lr = _current_lr(view)
    if _lr_scheduled(view, t):
        return []
    onset = _streak_from(ratios <= t.update_ratio_low) if flat else _streak_from(medians <= t.lr_creep_ratio)
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
                f"Raise the learning rate 3-10x{_lr_text(lr, 3, 10, up=True)} and watch the ratio approach ~1e-3.",
                "Run a learning-rate range test (sweep it in log space, e.g. 1e-5 to 1, over a few hundred steps).",
                "With SGD, add momentum (0.9) or switch to Adam (lr ~1e-3).",
            ],
        )
    ]


def _grad_weight_ratio(view: RunView, steps: list[int]) -> float | None:
    """Median ||g|| / ||w|| over the weight matrices at ``steps``, or ``None`` if not recorded."""
    g, w = view.matrix("grad_norm"), view.matrix("weight_norm")
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
    m = view.matrix("lr")
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
