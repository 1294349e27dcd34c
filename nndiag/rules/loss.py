"""Loss-curve rules: non-finite, diverging, oscillating and flat training losses.

Each rule detects with the loss-curve analysis (:mod:`nndiag.rules.curves`, through
:mod:`nndiag.rules.loss_view`) and then describes what it found. The fit rules (over- and
underfitting) are in :mod:`nndiag.rules.fit`, the initial-loss check in :mod:`nndiag.rules.initial`.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.loss import nonfinite_loss
    >>> losses = [2.3, 2.2, float("inf")]
    >>> h = pd.DataFrame({"step": [0, 1, 2], "layer": [""] * 3, "stat": ["loss"] * 3, "value": losses})
    >>> [(d.code, d.step, d.severity) for d in nonfinite_loss(RunView(h), AdvisorConfig())]
    [('nonfinite_loss', 2, 'error')]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.curves import relative_drop
from nndiag.rules.fit import overfitting, underfitting
from nndiag.rules.initial import initial_loss_off
from nndiag.rules.loss_view import LossThresholds, divergence, g, loss_curve, oscillation, plateau
from nndiag.rules.registry import NoThresholds, rule
from nndiag.rules.task_view import task_of
from nndiag.rules.view import RunView, finite


@dataclass(frozen=True)
class PlateauThresholds(LossThresholds):
    """When a flat training loss is likely the data's floor rather than a stall."""

    flat_floor_frac: float = 0.5  # a flat loss below half the constant-prediction loss: reported as info only


def _validation_falling(view: RunView, since: int, drop: float) -> bool:
    """Whether the validation loss fell by more than ``drop`` (relative) over the validations since ``since``."""
    val = finite(view.series(Q.VAL_LOSS))
    val = val[val.index >= since]
    if len(val) < 3:
        return False
    k = max(len(val) // 3, 1)
    first, last = float(val.iloc[:k].median()), float(val.iloc[-k:].median())
    return first > 0 and (first - last) / first > drop


__all__ = [
    "divergence",
    "initial_loss_off",
    "loss_curve",
    "loss_diverging",
    "loss_not_decreasing",
    "loss_oscillating",
    "nonfinite_loss",
    "oscillation",
    "overfitting",
    "plateau",
    "relative_drop",
    "underfitting",
]


@rule(
    "nonfinite_loss",
    requires=(Q.LOSS,),
    severity="error",
    rank=300,
    broken=True,
    summary="the loss is NaN/Inf; names the first step and the first input/layer (forward order) with NaN/Inf at "
    "or before it",
)
def nonfinite_loss(view: RunView, t: NoThresholds) -> list[Diagnosis]:
    """NaN/Inf loss: name the first step and, where recorded, the first input/layer with NaN/Inf."""
    loss = view.series(Q.LOSS)
    bad = loss[~loss.map(math.isfinite)]
    if bad.empty:
        return []
    first = int(bad.index[0])
    evidence: dict[str, float] = {"first_step": first, "nonfinite_steps": float(len(bad))}
    where = ""
    source = view.first_nonfinite(upto=first)
    if source is not None:
        layer, step = source
        evidence["first_nonfinite_layer_step"] = step
        where = f"; the first NaN/Inf appeared in {'the model input' if layer == 'input' else layer} at step {step}"
    last_good = loss[loss.map(math.isfinite)]
    if len(last_good):
        evidence["last_finite_loss"] = float(last_good.iloc[-1])
    return [
        Diagnosis(
            code="nonfinite_loss",
            severity="error",
            step=first,
            layer=None,
            message=f"The loss became {_kind(float(bad.iloc[0]))} at step {first}{where}.",
            evidence=evidence,
            suggestions=[
                "Lower the learning rate (by 10x) and add gradient clipping (e.g. gradient_clip_val=1.0).",
                "Check the data for NaN/Inf and the loss for log(0) or division by zero (add an epsilon).",
                "With fp16 mixed precision use a GradScaler, or train in bf16.",
            ],
        )
    ]


def _kind(value: float) -> str:
    return "NaN" if math.isnan(value) else "infinite"


@rule(
    "loss_diverging",
    requires=(Q.LOSS,),
    severity="error",
    rank=320,
    explained_by=("lr_too_high", "nonfinite_loss"),
    thresholds=LossThresholds,
    broken=True,
    summary="smoothed loss ≥ 2x its running minimum for 5+ steps (above the converged level), or a raw loss ≥ "
    "max(1e3, 2x minimum) at 2 consecutive steps",
)
def loss_diverging(view: RunView, t: LossThresholds) -> list[Diagnosis]:
    """Loss climbing to >= ``diverge_factor`` x its running minimum (smoothed, sustained), or exploding.

    The loss is smoothed by a trailing rolling median (small-batch noise), must have left the
    converged region, and must stay up for ``diverge_min_steps`` losses (``explode_min_steps`` for
    a raw loss above ``loss_explode``), so that single spikes and short warmup bumps are ignored.
    """
    d = divergence(view, t)
    if d is None:
        return []
    span = view.last_step - d.min_step
    how = "exploded" if d.exploded else "is diverging"
    return [
        Diagnosis(
            code="loss_diverging",
            severity="error",
            step=d.onset,
            layer=None,
            message=(
                f"The loss {how}: it rose from its minimum {g(d.min_loss)} at step {d.min_step} to "
                f"{g(d.loss)} ({g(d.factor)}x) over {span} steps."
            ),
            evidence={
                "min_loss": d.min_loss,
                "min_step": float(d.min_step),
                "loss": d.loss,
                "factor": d.factor,
                "exploded": float(d.exploded),
            },
            suggestions=[
                "Lower the learning rate 3-10x; if the loss diverged after a while, add a decay schedule.",
                "Add gradient clipping (e.g. clip_grad_norm_ max_norm=1.0) and a learning-rate warmup.",
                "Check the data for corrupt or mislabelled batches around the step where it began.",
            ],
        )
    ]


@rule(
    "loss_oscillating",
    requires=(Q.LOSS,),
    rank=330,
    explained_by=("lr_too_high", "nonfinite_loss"),
    thresholds=LossThresholds,
    summary="median step-to-step change / median loss ≥ 0.5 over a window of ≥ 30 steps (longer for noisy "
    "losses), held 30 steps, with the loss above half its start level and not 10% lower than the previous window",
)
def loss_oscillating(view: RunView, t: LossThresholds) -> list[Diagnosis]:
    """Large step-to-step swings (median |diff| / median >= ``oscillation_cv``) with no progress.

    No progress: over the last ``oscillation_window`` steps the loss is still above
    ``oscillation_level_frac`` of its start level and not ``oscillation_progress`` lower than in
    the window before; a loss near zero (converged) is never called oscillating, since its
    relative per-batch swings are large in healthy runs.
    """
    o = oscillation(view, t)
    if o is None:
        return []
    return [
        Diagnosis(
            code="loss_oscillating",
            severity="warning",
            step=o.onset,
            layer=None,
            message=(
                f"The loss swings by {o.swing:.0%} from step to step without progress: over the last "
                f"{o.window} steps it stayed around {g(o.level)} ({o.level / o.start:.0%} of its start level "
                f"{g(o.start)})."
            ),
            evidence={"swing": o.swing, "level": o.level, "start_loss": o.start, "window": float(o.window)},
            suggestions=[
                "Lower the learning rate 3-10x (or add momentum/Adam, which damp zig-zagging).",
                "Increase the batch size if it is small: per-batch losses of tiny batches are noisy.",
                "Check the data pipeline: shuffled labels or inconsistent preprocessing make the loss jump.",
            ],
        )
    ]


@rule(
    "loss_not_decreasing",
    requires=(Q.LOSS,),
    rank=370,
    explained_by=(
        "lr_too_low",
        "weights_not_updating",
        "vanishing_gradients",
        "activation_collapse",
        "saturated_activations",
        "dead_units",
        "symmetric_init",
        "nonfinite_loss",
        "underfitting",
        "loss_at_baseline",
        "output_activation_mismatch",
        "loss_mismatch",
        "regularization_too_strong",
    ),
    severity=("info", "warning"),
    thresholds=PlateauThresholds,
    summary="< 1% drop between the first and last thirds of a window of ≥ 50 steps or 25% of the run (longer "
    "until the estimate's noise is < 1%), unless a smaller drop is ≥ 4 standard errors and steady; silent when "
    "converged (< 1e-3 or < 5% of the start), diverging, oscillating, or while the validation loss still falls; "
    "info when the loss rests below half the constant-prediction loss (likely the data's floor)",
)
def loss_not_decreasing(view: RunView, t: PlateauThresholds) -> list[Diagnosis]:
    """Loss dropped by less than ``flat_rel_drop`` over the last window, and is not near zero.

    The window is at least ``flat_window`` steps, ``flat_window_frac`` of the run in long runs, and
    long enough for the noise of the drop estimate to be below ``flat_rel_drop``. Not reported when
    the loss is diverging or oscillating (the more specific rules speak) or resting near zero.
    """
    p = plateau(view, t)
    if p is None or divergence(view, t) is not None or oscillation(view, t) is not None:
        return []
    if _validation_falling(view, p.onset, t.flat_rel_drop):
        return []  # a noisy training loss (dropout, small batches) while the model still generalises better
    c = loss_curve(view, t)
    start = c.start if c is not None else p.level
    change = f"fell only {p.drop:.1%}" if p.drop >= 0 else f"rose {-p.drop:.1%}"
    base = task_of(view).baseline
    floor = base is not None and p.level < t.flat_floor_frac * base
    return [
        Diagnosis(
            code="loss_not_decreasing",
            severity="info" if floor else "warning",
            step=p.onset,
            layer=None,
            message=(
                f"The loss has stopped decreasing at {g(p.level)} ({p.level / start:.0%} of its start {g(start)}): "
                f"it {change} over the last {p.window} steps."
            ),
            evidence={
                "loss": p.level,
                "start_loss": start,
                "relative_drop": p.drop,
                "window": float(p.window),
                "noise": p.noise,
            },
            suggestions=[
                "Run a learning-rate range test: a flat loss from the start usually means the rate is far off.",
                "Check that the model can overfit a tiny subset (~20 samples); if not, look for a bug in the "
                "data/labels, the loss, or parameters missing from the optimizer.",
                "If this is a late plateau, decay the learning rate (e.g. ReduceLROnPlateau) or add capacity.",
            ],
        )
    ]
