"""A training loss resting at the loss of a constant prediction: the network learns nothing from its inputs.

The baseline is the loss of the best constant prediction, from the targets seen (the targets'
variance for MSE, the entropy of the class balance for cross-entropy: ln C for C balanced
classes; see :func:`nndiag.collect.task.baseline_loss`), else ln C of a softmax classifier.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.baseline import loss_at_baseline
    >>> rows = [(s, "", "loss", 1.0 + 0.001 * (s % 2)) for s in range(120)]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> facts = {"task": {"loss": {"kind": "mse"}, "baseline_loss": 1.0}}
    >>> [(d.code, d.severity) for d in loss_at_baseline(RunView(h, facts), AdvisorConfig())]
    [('loss_at_baseline', 'error')]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.loss_view import LossThresholds, g, loss_curve
from nndiag.rules.registry import rule
from nndiag.rules.task_view import task_of
from nndiag.rules.view import RunView, finite


@dataclass(frozen=True)
class BaselineThresholds(LossThresholds):
    """How close to the constant-prediction loss a flat training loss must rest."""

    baseline_tolerance: float = 0.05  # the loss within 5% of the baseline (or two standard errors of a window median)
    baseline_window: int = 25  # ... over each of the last two windows of this many steps (or 1/8 of the run)
    baseline_max_error: float = 0.2  # no verdict when two standard errors of a window median exceed 20% (too noisy)


def baseline_of(view: RunView, t: LossThresholds) -> tuple[float, str] | None:
    """``(baseline loss, how it was obtained)`` or ``None`` when unknown."""
    task = task_of(view)
    if task.baseline is not None and task.baseline > 0:
        what = {
            "mse": "predicting the targets' mean (their variance)",
            "l1": "predicting the targets' median",
            "cross_entropy": "predicting the class frequencies",
            "bce": "predicting the positive rate",
            "bce_with_logits": "predicting the positive rate",
        }.get(task.loss_kind, "a constant prediction")
        return task.baseline, what
    c = loss_curve(view, t)
    if c is not None and c.chance is not None:
        return c.chance, "a uniform guess over the classes (ln C)"
    return None


def baseline_error(view: RunView) -> float:
    """Relative standard error of the baseline estimated from the targets seen (0 when not estimated).

    Delta method: binary cross-entropy |ln((1-p)/p)| sqrt(p(1-p)/n) (an imbalanced prior is uncertain
    from a few batches), cross-entropy sqrt((sum p ln^2 p - H^2) / n), MSE sqrt(2/n).

    Example:
        >>> import pandas as pd
        >>> f = {"task": {"loss": {"kind": "bce"}, "baseline_loss": 0.325,
        ...               "target": {"mean": 0.1, "numel": 192, "in_01": True}}}
        >>> round(baseline_error(RunView(pd.DataFrame(), f)), 2)
        0.15
    """
    task = task_of(view)
    base, target = task.baseline, task.target
    n = float(target.get("numel") or 0) if task.loss_kind in ("bce", "bce_with_logits") else 0.0
    if not base or not target:
        return 0.0
    if task.loss_kind in ("bce", "bce_with_logits"):
        p = target.get("mean")
        if not isinstance(p, (int, float)) or not 0 < p < 1 or n <= 0:
            return 0.0
        return abs(math.log((1 - p) / p)) * math.sqrt(p * (1 - p) / n) / base
    if task.loss_kind == "cross_entropy":
        counts = [float(c) for c in target.get("class_counts") or [] if c]
        total = sum(counts)
        if total <= 0:
            return 0.0
        second = sum(c / total * math.log(c / total) ** 2 for c in counts)
        return math.sqrt(max(second - base**2, 0.0) / total) / base
    if task.loss_kind == "mse":
        rows = float(target.get("rows") or 0)
        return math.sqrt(2.0 / rows) if rows > 0 else 0.0
    return 0.0


def at_baseline(view: RunView, t: BaselineThresholds, slack: float = 1.0) -> tuple[float, float, str, int] | None:
    """``(level, baseline, how, onset step)`` when the loss has rested at the baseline over two windows.

    The window is ``baseline_window`` steps or 1/8 of the run; the medians of the last
    two windows must both lie within ``baseline_tolerance`` (or two standard errors of a window
    median, for a noisy loss, or one of the baseline's own estimate) of the baseline. A loss that only
    passes the baseline on its way down does not stay there for two windows, nor may it still be
    falling from one window to the next. No verdict when the loss is too noisy to tell
    (``baseline_max_error``). ``slack`` widens the tolerance (the learning-rate rule, which has a
    collapse as evidence of its own, uses 2).
    """
    c = loss_curve(view, t)
    if c is None:
        return None
    n = len(c.values)
    w = max(t.baseline_window, n // 8)
    if n < 2 * w:
        return None
    found = baseline_of(view, t)
    if found is None:
        return None
    base, how = found
    if base <= t.converged_loss:
        return None
    recent, before = float(np.median(c.values[-w:])), float(np.median(c.values[-2 * w : -w]))
    error = 2 * math.sqrt(math.pi / 2) * c.noise / math.sqrt(w)
    if error > t.baseline_max_error:
        return None
    tol = slack * max(t.baseline_tolerance, error, baseline_error(view))
    if abs(recent - base) > tol * base or abs(before - base) > tol * base:
        return None
    if before - recent > max(t.baseline_tolerance / 2, math.sqrt(2) * error) * before:
        return None  # still falling: on its way down, not resting
    return recent, base, how, int(c.steps[-2 * w])


def output_spread_ratio(view: RunView) -> float | None:
    """The model output's spread across samples now, relative to the first logging step (``None``: not recorded)."""
    spread = finite(view.series(Q.OUTPUT_SPREAD))
    if len(spread) < 2 or not float(spread.iloc[0]) > 0:
        return None
    return float(spread.iloc[-1]) / float(spread.iloc[0])


def _nonlinear(view: RunView) -> bool:
    """Whether the model has a nonlinearity (an activation module, or one recorded after a linear layer)."""
    layers = view.facts.layers
    return not layers or any(f.kind == "activation" or f.activation for f in layers.values())


@rule(
    "loss_at_baseline",
    requires=(Q.LOSS,),
    severity="error",
    rank=335,
    explained_by=(
        "lr_too_high",
        "output_activation_mismatch",
        "loss_mismatch",
        "weights_not_updating",
        "symmetric_init",
        "vanishing_gradients",
        "dead_units",
        "nonfinite_loss",
        "regularization_too_strong",
        "lr_too_low",
        "target_not_normalized",
        # mechanisms that stop a network from learning name the fix better than the symptom
        "sigmoid_hidden_layer",
        "saturated_activations",
        "activation_collapse",
        "poor_init_scale",
        "input_not_normalized",
    ),
    thresholds=BaselineThresholds,
    summary="the medians of the training loss over its last two windows (≥ 25 steps or 1/8 of the run each) lie "
    "within 5% (or two standard errors) of the loss of a constant prediction (the targets' variance for MSE, the "
    "class entropy for cross-entropy, ln C): the model learns nothing from its inputs",
)
def loss_at_baseline(view: RunView, t: BaselineThresholds) -> list[Diagnosis]:
    """A flat training loss at what a constant prediction would give (needs a baseline: targets or ln C)."""
    if not _nonlinear(view):
        return []  # a linear model may simply be unable to fit: underfitting / loss_not_decreasing speak
    found = at_baseline(view, t)
    if found is None:
        return []
    level, base, how, onset = found
    spread = output_spread_ratio(view)
    constant = spread is not None and spread < 0.05
    evidence = {"loss": level, "baseline_loss": base}
    if spread is not None:
        evidence["output_spread_ratio"] = spread
    what = " and the network predicts nearly the same for every sample" if constant else ""
    return [
        Diagnosis(
            code="loss_at_baseline",
            severity="error",
            step=onset,
            layer=None,
            message=(
                f"The training loss rests at {g(level)}, the {g(base)} of {how}{what}: the model learns nothing from "
                "its inputs."
            ),
            evidence=evidence,
            suggestions=[
                "Check that inputs and labels still match: shuffle or split them together (one permutation, one "
                "DataLoader), and look at a few (input, label) pairs.",
                "Check that the model can overfit a handful of samples (nndiag.preflight(model, batch)); if it can, "
                "the labels do not follow from the inputs as they are fed.",
                "If the first updates were large, lower the learning rate 10x.",
            ],
        )
    ]
