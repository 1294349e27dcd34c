"""Regression targets far from unit scale (the lecture normalises the outputs as well as the inputs).

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.targets import target_not_normalized
    >>> h = pd.DataFrame({"step": [0], "layer": [""], "stat": ["loss"], "value": [2e4]})
    >>> facts = {"task": {"loss": {"kind": "mse"}, "target": {"looks_like": "continuous", "mean": 152.0,
    ...          "feature_std": 77.0, "min": 25.0, "max": 346.0}}}
    >>> [(d.code, d.severity) for d in target_not_normalized(RunView(h, facts), AdvisorConfig())]
    [('target_not_normalized', 'warning')]
"""

from __future__ import annotations

from dataclasses import dataclass

from nndiag.diagnosis import Diagnosis
from nndiag.rules.layers import first_step
from nndiag.rules.registry import rule
from nndiag.rules.task_view import REGRESSION_LOSSES, task_of
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class TargetScaleThresholds:
    """When regression targets count as unnormalised (the input rule's numbers, applied to the targets)."""

    target_mean_abs: float = 10.0  # |target mean| above this: the output bias alone needs ~mean/lr Adam steps
    target_std_max: float = 10.0  # per-output target std above this (losses in the hundreds, huge gradients) ...
    target_std_min: float = 0.01  # ... or below this (the loss is tiny from the start; relative errors are lost)


@rule(
    "target_not_normalized",
    rank=111,
    thresholds=TargetScaleThresholds,
    summary="regression targets (MSE/L1/Huber loss, continuous values) with \\|mean\\| > 10, per-output std > 10 or "
    "std < 0.01",
)
def target_not_normalized(view: RunView, th: TargetScaleThresholds) -> list[Diagnosis]:
    """Continuous regression targets far from zero mean / unit scale (needs the recorded task facts)."""
    t = task_of(view)
    if t.loss_kind not in REGRESSION_LOSSES or t.looks_like != "continuous":
        return []
    mean, std = t.target.get("mean"), t.target.get("feature_std", t.target.get("std"))
    if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)):
        return []
    mean, std = float(mean), float(std)
    if abs(mean) > th.target_mean_abs or std > th.target_std_max:
        how = f"mean {mean:.3g} and std {std:.3g}"
        why = "the loss and its gradients are huge at the start and the output layer needs many steps to reach them"
    elif std < th.target_std_min:
        how = f"std {std:.3g}"
        why = "the loss is tiny from the start and differences between predictions hardly register"
    else:
        return []
    return [
        Diagnosis(
            code="target_not_normalized",
            severity="warning",
            step=first_step(view),
            layer=None,
            message=f"The regression targets are far from unit scale ({how}): {why}.",
            evidence={"target_mean": mean, "target_std": std},
            suggestions=[
                "Standardise the targets with the training set's mean and std (e.g. sklearn's StandardScaler on y) "
                "and invert it on the predictions.",
                "Or predict log(y) for positive targets spanning orders of magnitude.",
            ],
        )
    ]
