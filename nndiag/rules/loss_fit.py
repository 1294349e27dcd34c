"""The loss against the task: a loss that does not fit the targets, or shapes it silently broadcasts.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.loss_fit import loss_mismatch
    >>> h = pd.DataFrame({"step": [0], "layer": [""], "stat": ["loss"], "value": [1.0]})
    >>> facts = {"task": {"loss": {"kind": "mse", "broadcast_from": [32, 1]}, "broadcast_confirmed": True,
    ...                   "shape_mismatch": {"kind": "broadcast", "output": [32, 1], "target": [32]}}}
    >>> [(d.code, d.severity) for d in loss_mismatch(RunView(h, facts), AdvisorConfig())]
    [('loss_mismatch', 'error')]
"""

from __future__ import annotations

from nndiag.diagnosis import Diagnosis
from nndiag.rules.registry import NoThresholds, rule
from nndiag.rules.task_view import BINARY_LOSSES, REGRESSION_LOSSES, Finding, TaskView, at_start, task_of
from nndiag.rules.view import RunView


def _broadcast(t: TaskView) -> Finding | None:
    m = t.shape_mismatch
    if t.loss_kind not in (*REGRESSION_LOSSES, *BINARY_LOSSES):
        return None
    # the loss graph must show the broadcast: an [N, 1] output squeezed before the loss is fine
    if t.broadcast_from is None and not t.broadcast_confirmed:
        return None
    out = list(m["output"]) if m else list(t.broadcast_from or [])
    tgt = list(m["target"]) if m else []
    against = f" against targets of shape {tgt}" if tgt else ""
    return (
        "error",
        f"The loss compares outputs of shape {out}{against}: they broadcast, so every prediction is compared with "
        "every target and the model can only learn the batch mean.",
        [
            "Make the shapes equal: out.squeeze(-1) (or y.unsqueeze(-1)) before the loss.",
            "Check the warning PyTorch prints about a target size different from the input size.",
        ],
        {"output_elements": float(_prod(out)), "target_elements": float(_prod(tgt)) if tgt else float("nan")},
    )


def _prod(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _binary_range(t: TaskView) -> Finding | None:
    rng = t.target_range
    if t.loss_kind not in BINARY_LOSSES or rng is None or (rng[0] >= 0.0 and rng[1] <= 1.0):
        return None
    name = "BCEWithLogitsLoss" if t.loss_kind == "bce_with_logits" else "BCELoss"
    return (
        "error",
        f"{name} expects targets in [0, 1] (probabilities of the positive class), but the targets span "
        f"{rng[0]:.3g} to {rng[1]:.3g}.",
        [
            "For class labels 0..C-1 use CrossEntropyLoss with C outputs; for regression use MSELoss or L1Loss.",
            "If they are binary labels coded as -1/+1 or 1/2, map them to 0/1.",
        ],
        {"target_min": rng[0], "target_max": rng[1]},
    )


def _soft_cross_entropy(t: TaskView) -> Finding | None:
    if t.loss_kind != "cross_entropy" or t.looks_like != "continuous" or t.note != "soft_targets":
        return None
    rng = t.target_range or (float("nan"), float("nan"))
    return (
        "error",
        f"CrossEntropyLoss gets continuous targets ({rng[0]:.3g} to {rng[1]:.3g}) of the output's shape: it reads "
        "them as class probabilities, which they are not. This looks like a regression trained with a "
        "classification loss.",
        ["Use MSELoss or L1Loss (with a linear output) for continuous targets."],
        {"target_min": rng[0], "target_max": rng[1]},
    )


def _softmax_multilabel(t: TaskView) -> Finding | None:
    if t.loss_kind not in REGRESSION_LOSSES or t.looks_like != "multi_hot" or t.final_activation != "softmax":
        return None
    return (
        "warning",
        "The targets are multi-label (several 1s per row) but the output is a softmax, whose values sum to 1: it "
        "cannot predict two labels at once, and MSE on it trains slowly.",
        ["Use one sigmoid output per label with BCEWithLogitsLoss (no activation on the outputs)."],
        {},
    )


def _class_indices_regressed(t: TaskView) -> Finding | None:
    """Class labels 0..K-1 (few, consecutive, from 0) regressed with one output: classes treated as a scale."""
    distinct, lo, hi = t.target.get("distinct"), t.target.get("min"), t.target.get("max")
    if t.loss_kind not in REGRESSION_LOSSES or t.looks_like not in ("integer_levels", "class_indices"):
        return None
    if t.output_width not in (None, 1) or not isinstance(distinct, int) or not 3 <= distinct <= 10:
        return None
    if lo != 0 or hi != distinct - 1:
        return None  # scores such as ratings 1-5 or grades 3-9 are ordinal on purpose
    return (
        "warning",
        f"The targets are the whole numbers 0..{distinct - 1} and the loss is a regression loss on one output: if "
        "they are class labels, the model is told that class 2 lies between classes 1 and 3.",
        [
            f"For class labels use CrossEntropyLoss with {distinct} outputs (logits) and integer targets.",
            "If the numbers are an ordered score, this is fine (standardise them for the regression).",
        ],
        {"distinct_values": float(distinct)},
    )


def _nll_without_log(t: TaskView) -> Finding | None:
    if t.note != "nll_without_log":
        return None
    return (
        "error",
        "NLLLoss gets probabilities, not log-probabilities: it then minimises -p instead of -log p, which gives "
        "almost no gradient for wrong predictions.",
        ["Use log_softmax before NLLLoss, or pass the raw logits to CrossEntropyLoss."],
        {},
    )


def _sum_reduction(t: TaskView) -> Finding | None:
    if t.reduction != "sum" or t.scaled or t.loss_kind == "unknown":
        return None
    return (
        "info",
        "The loss is a sum over the batch (reduction='sum'): its scale, and so the effective learning rate, grows "
        "with the batch size.",
        [
            "Use reduction='mean' (the default) so that learning rates carry over between batch sizes.",
            "If the sum is intended, divide the learning rate by the batch size.",
        ],
        {},
    )


CHECKS = (
    _broadcast,
    _binary_range,
    _soft_cross_entropy,
    _nll_without_log,
    _softmax_multilabel,
    _class_indices_regressed,
    _sum_reduction,
)


@rule(
    "loss_mismatch",
    severity=("info", "warning", "error"),
    rank=102,
    thresholds=NoThresholds,
    summary="the loss does not fit the task: output and target shapes that broadcast (`[N, 1]` against `[N]`), "
    "binary cross-entropy with targets outside [0, 1], cross-entropy on continuous targets, NLLLoss on "
    "probabilities; MSE on a softmax for multi-label targets, or on class labels 0..K-1 (3-10 values) with one "
    "output (warning); a sum reduction (info)",
)
def loss_mismatch(view: RunView, th: NoThresholds) -> list[Diagnosis]:
    """The first loss/task misfit found (most severe check first); needs the recorded task facts."""
    t = task_of(view)
    if t.loss_kind == "unknown" and t.note is None:
        return []
    for check in CHECKS:
        found = check(t)
        if found is not None:
            return at_start(view, "loss_mismatch", found)
    return []
