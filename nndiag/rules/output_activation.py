"""The output activation against the targets and the loss: can the network produce what it is asked for.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.output_activation import output_activation_mismatch
    >>> h = pd.DataFrame({"step": [0], "layer": [""], "stat": ["loss"], "value": [40.0]})
    >>> facts = {"task": {"loss": {"kind": "mse", "input_activation": "sigmoid"},
    ...                   "target": {"min": 2.0, "max": 30.0, "looks_like": "continuous"}}}
    >>> [(d.code, d.severity) for d in output_activation_mismatch(RunView(h, facts), AdvisorConfig())]
    [('output_activation_mismatch', 'error')]
"""

from __future__ import annotations

from dataclasses import dataclass

from nndiag.diagnosis import Diagnosis
from nndiag.rules.registry import rule
from nndiag.rules.task_view import OUTPUT_RANGES, REGRESSION_LOSSES, Finding, TaskView, at_start, task_of
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class OutputRangeThresholds:
    """How far the targets may lie outside what the output activation can produce."""

    output_range_margin: float = 0.05  # targets beyond the activation's range by more than 5% of its width (or of
    # the targets' range for one-sided ones such as ReLU) cannot be fitted: label smoothing and rounding stay inside
    output_negative_frac: float = 0.05  # a non-negative output (ReLU, softplus) against targets of which more than
    # 5% are negative


def _out_of_range(t: TaskView, act: str, th: OutputRangeThresholds) -> str | None:
    """A phrase for targets the activation cannot produce, or ``None``."""
    rng, lo_hi = t.target_range, OUTPUT_RANGES.get(act)
    if rng is None or lo_hi is None:
        return None
    lo, hi = lo_hi
    tmin, tmax = rng
    if act in ("relu", "softplus"):
        numel = float(t.target.get("numel") or 0)
        neg = float(t.target.get("negatives") or 0)
        frac = neg / numel if numel else 0.0
        if tmin < 0 and frac > th.output_negative_frac:
            return f"{frac:.0%} of the targets are negative (down to {tmin:.3g})"
        return None
    margin = th.output_range_margin * (hi - lo)
    if tmax > hi + margin or tmin < lo - margin:
        return f"the targets span {tmin:.3g} to {tmax:.3g}"
    return None


@rule(
    "output_activation_mismatch",
    severity=("warning", "error"),
    rank=101,
    thresholds=OutputRangeThresholds,
    summary="the output activation cannot produce the targets (sigmoid on targets outside [0, 1], ReLU on negative "
    "targets, tanh beyond ±1, softmax over one unit), or the loss applies it again (softmax before "
    "CrossEntropyLoss, sigmoid before BCEWithLogitsLoss); from the loss's autograd graph and the targets seen",
)
def output_activation_mismatch(view: RunView, th: OutputRangeThresholds) -> list[Diagnosis]:
    """The output activation does not fit the targets or the loss (needs the recorded task facts)."""
    t = task_of(view)
    act = t.final_activation or "none"
    where = t.final_layer
    found: Finding | None = None
    if act == "softmax" and t.output_width == 1:
        found = (
            "error",
            "The output is a softmax over a single unit: it is always 1.0, so no gradient reaches the network.",
            [
                "For a binary target use one output with a sigmoid and BCELoss (or no activation and "
                "BCEWithLogitsLoss), or two outputs with CrossEntropyLoss.",
                "For regression remove the softmax.",
            ],
            {"output_width": 1.0},
        )
    elif t.note == "softmax_before_cross_entropy":
        found = (
            "warning",
            "The model's output goes through a softmax before CrossEntropyLoss, which applies its own (log-)softmax: "
            "the probabilities are squashed twice and the gradients are weak.",
            ["Remove the softmax: CrossEntropyLoss expects raw logits (apply softmax only for predictions)."],
            {},
        )
    elif t.note == "sigmoid_before_bce_with_logits":
        found = (
            "warning",
            "The model's output goes through a sigmoid before BCEWithLogitsLoss, which applies its own sigmoid: "
            "the outputs are squashed twice and the loss cannot fall below ~0.31.",
            ["Remove the sigmoid (BCEWithLogitsLoss expects logits), or keep it and use BCELoss."],
            {},
        )
    elif t.loss_kind in (*REGRESSION_LOSSES, "unknown") and t.looks_like not in ("class_indices", None):
        phrase = _out_of_range(t, act, th)
        if phrase is not None:
            lo, hi = OUTPUT_RANGES[act]
            rng = t.target_range or (float("nan"), float("nan"))
            found = (
                "error",
                f"The output activation is {act}, which only produces values in [{lo:g}, {hi:g}], but {phrase}: "
                "the network cannot fit them and its outputs saturate.",
                [
                    f"Remove the final {act} for regression (a linear output), or scale the targets into its range.",
                    "Standardise the targets (subtract the mean, divide by the std) and undo it for predictions.",
                ],
                {"target_min": rng[0], "target_max": rng[1], "range_low": lo, "range_high": hi},
            )
    return [] if found is None else at_start(view, "output_activation_mismatch", found, where)
