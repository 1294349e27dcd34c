"""The initial-loss sanity check: a softmax classifier should start near ln C (the lecture's first check).

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.initial import initial_loss_off
    >>> h = pd.DataFrame({"step": [0, 1], "layer": ["", ""], "stat": ["loss", "loss"], "value": [9.0, 8.0]})
    >>> [(d.code, d.severity) for d in initial_loss_off(RunView(h, {"num_classes": 10}), AdvisorConfig())]
    [('initial_loss_off', 'warning')]
"""

from __future__ import annotations

import math

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.loss_view import ChanceThresholds, g, softmax_classes
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView


@rule(
    "initial_loss_off",
    requires=(Q.LOSS,),
    rank=340,
    thresholds=ChanceThresholds,
    summary="step-0 loss off ln C by more than 50%. C from `num_classes=` or the last linear layer's width (≥ 2); "
    "with an inferred C only when the loss is consistent with softmax cross-entropy (not above ln C + "
    "1.5·std(logits)·√(2 ln C), not below ln C unless C was declared)",
)
def initial_loss_off(view: RunView, t: ChanceThresholds) -> list[Diagnosis]:
    """Step-0 loss of a C-way softmax classifier off ln C by more than ``initial_loss_tolerance`` (relative).

    Only for classifiers known to be softmax cross-entropy (see :func:`softmax_classes`): never for
    one output, and for an inferred C only when the loss is consistent with cross-entropy. A loss
    below ln C is reported only for a user-declared ``num_classes`` (pretrained models start low).
    """
    loss = view.series(Q.LOSS)
    if loss.empty or not math.isfinite(float(loss.iloc[0])):
        return []
    step0, loss0 = int(loss.index[0]), float(loss.iloc[0])
    if step0 > 0:
        return []  # the run's start was not recorded (resumed without its earlier history): no initial loss
    classes = softmax_classes(view, t, loss0)
    if classes is None:
        return []
    ln_c = math.log(classes)
    off = (loss0 - ln_c) / ln_c
    if abs(off) <= t.initial_loss_tolerance:
        return []
    if off > 0:
        message = (
            f"The initial loss {g(loss0)} is {loss0 / ln_c:.1f}x the ln({classes}) = {ln_c:.3g} expected for "
            f"{classes}-way softmax cross-entropy at initialisation: the initial predictions are overconfident."
        )
        suggestions = [
            "Scale down the initialisation of the output layer (e.g. multiply its weights by 0.01, zero its bias).",
            "Use PyTorch's default or Xavier/He initialisation instead of a large custom one.",
            "Pass raw logits to CrossEntropyLoss (no softmax/log-softmax before it), and check num_classes.",
        ]
    else:
        message = (
            f"The initial loss {g(loss0)} is far below the ln({classes}) = {ln_c:.3g} expected for an untrained "
            f"{classes}-way softmax classifier."
        )
        suggestions = [
            "If the model is pretrained this is expected; otherwise check for labels leaking into the inputs.",
            "Check num_classes and that the loss is the mean cross-entropy over the batch (not a sum or a subset).",
        ]
    return [
        Diagnosis(
            code="initial_loss_off",
            severity="warning",
            step=step0,
            layer=None,
            message=message,
            evidence={"initial_loss": loss0, "expected_loss": ln_c, "num_classes": float(classes), "rel_off": off},
            suggestions=suggestions,
        )
    ]
