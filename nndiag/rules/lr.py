"""Learning-rate rules: update/weight ratios far too large (with an unstable loss) or far too small.

The lecture's yardstick is the ratio of the update to the weight magnitude per parameter tensor,
``update_ratio`` = ||w_after - w_before|| / ||w_before||: about 1e-3 is healthy. Rules take the
median over the trainable weight matrices (biases, often zero-initialised, are left out) at each
logging step, and require it over ``update_ratio_checks`` logging steps. A high ratio alone is not
an error (Adam at lr 1e-3 routinely gives ~1e-2, and a fast but stable run may briefly reach
0.1); it must come with a loss that diverges, oscillates, turns NaN, or a network that collapsed
to a constant prediction.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.lr import lr_too_high
    >>> rows = [(s, "", "loss", v) for s, v in enumerate([2.3, 2.2, 3.1, 40.0, float("nan")])]
    >>> rows += [(s, "fc.weight", "update_ratio", 0.5) for s in range(4)]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> view = RunView(h, {"params": {"fc.weight": {"shape": [4, 8]}}})
    >>> [(d.code, d.step, d.severity) for d in lr_too_high(view, AdvisorConfig())]
    [('lr_too_high', 0, 'error')]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.baseline import BaselineThresholds, at_baseline, output_spread_ratio
from nndiag.rules.layers import sustained_start
from nndiag.rules.loss_view import divergence, oscillation
from nndiag.rules.lr_low import lr_too_low  # noqa: F401  (re-exported: the learning-rate rules, both ways)
from nndiag.rules.ratios import (
    UpdateRatioThresholds,
    current_lr,
    last_streak_start,
    lr_text,
    ratio_checks,
)
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class LrHighThresholds(UpdateRatioThresholds, BaselineThresholds):
    """When updates count as far too large."""

    update_ratio_high: float = 1e-1  # sustained median ratio above this = far too large (research checker: log10 > -1)
    lr_collapse_dead_frac: float = 0.99  # too high: a ReLU layer this dead (alive at step 0) passes only a constant
    lr_collapse_std_frac: float = 1e-4  # ... or a layer whose output std fell below this fraction of its step-0 std


def _collapse(view: RunView, t: LrHighThresholds) -> tuple[str, int, str] | None:
    """(layer, onset, what) of a layer that now passes only a constant but did not at step 0."""
    dead = view.matrix(Q.DEAD_FRAC)
    for layer, steps, col in _columns(dead):
        if len(col) < 2 or col[0] >= t.lr_collapse_dead_frac:
            continue
        start = sustained_start(steps, col >= t.lr_collapse_dead_frac, 1)
        if start is not None:
            return str(layer), start, f"{col[-1]:.0%} of the units of {layer} died"
    std = view.matrix(Q.ACT_STD)
    for layer, steps, col in _columns(std):
        if layer == "input" or len(col) < 2 or not col[0] > 0:
            continue
        start = sustained_start(steps, col <= t.lr_collapse_std_frac * col[0], 1)
        if start is not None:
            return str(layer), start, f"the output of {layer} became constant"
    return None


def _columns(m: pd.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(column, steps, values)`` of each column of a steps x layers matrix, NaN cells left out."""
    if m.empty:
        return []
    values = m.to_numpy(dtype=float)
    steps = m.index.to_numpy()
    out = []
    for j, name in enumerate(m.columns):
        keep = ~np.isnan(values[:, j])
        out.append((str(name), steps[keep], values[keep, j]))
    return out


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
    loss = view.series(Q.LOSS)
    bad = loss.index[~np.isfinite(loss.to_numpy(dtype=float))]
    return int(bad[0]) if len(bad) else None


@rule(
    "lr_too_high",
    requires=(Q.LOSS, Q.UPDATE_RATIO),
    severity="error",
    rank=150,
    explained_by=("regularization_too_strong",),
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
    base = at_baseline(view, t, slack=2.0) if _collapsed_in_training(view, t) else None
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
        onset = last_streak_start(ratios[ratios.index <= window.index[-1]] >= t.update_ratio_high)
        onset = int(window.index[0]) if onset is None else onset
        now = window.index[-1] == ratios.index[-1]
        when = "is" if now else "was"
        at = "" if now else f" at steps {window.index[0]}-{window.index[-1]}"
        lr = current_lr(view)
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
                    f"Lower the learning rate 3-10x{lr_text(lr, 3, 10, up=False)}.",
                    "Add a learning-rate warmup (e.g. linear over the first 5% of steps).",
                    "Clip gradients (clip_grad_norm_ with max_norm=1.0, or gradient_clip_val=1.0 in Lightning).",
                    "Add normalisation layers (BatchNorm/LayerNorm): they tolerate higher learning rates.",
                ],
            )
        ]
    return []
