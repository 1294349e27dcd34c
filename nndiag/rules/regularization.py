"""Regularisation so strong that the model cannot fit: weights shrink while the training loss stays high.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.regularization import regularization_too_strong
    >>> rows = [(s, "", "loss", 2.2) for s in range(100)]
    >>> rows += [(s, "fc.weight", "weight_norm", 10.0 * 0.97**s) for s in range(0, 100, 10)]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> facts = {"params": {"fc.weight": {"shape": [8, 8], "trainable": True}},
    ...          "optimizers": [{"class": "SGD", "param_groups": [{"lr": 0.1, "weight_decay": 0.5}]}]}
    >>> [(d.code, d.severity) for d in regularization_too_strong(RunView(h, facts), AdvisorConfig())]
    [('regularization_too_strong', 'warning')]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.baseline import baseline_of
from nndiag.rules.loss_view import LossThresholds, g, loss_curve
from nndiag.rules.ratios import weight_matrices
from nndiag.rules.registry import rule
from nndiag.rules.task_view import task_of
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class RegularizationThresholds(LossThresholds):
    """When shrinking weights and a high loss count as regularisation that prevents fitting."""

    reg_shrink: float = 0.7  # the weight matrices' median norm fell below 70% of its first value ...
    reg_coupled_min: float = 0.05  # strong enough to shrink the weights: a coupled (L2) weight decay >= 0.05 ...
    reg_decoupled_min: float = 5e-4  # ... or a decoupled (AdamW) lr x weight decay >= 5e-4 per step (1000 steps:
    # weights x0.6); AdamW's default 0.01 at lr 1e-3 (1e-5 per step) and SGD's 1e-4..5e-4 are far below
    reg_loss_frac: float = 0.6  # ... while the training loss stays above 60% of its reference (the baseline loss,
    # ln C, or its start), over the last flat_window steps


def weight_decays(view: RunView, t: RegularizationThresholds) -> list[float]:
    """The weight decays strong enough to shrink the weights, one per such parameter group.

    Coupled (L2 added to the gradient: SGD, Adam): ``weight_decay >= reg_coupled_min``. Decoupled
    (AdamW, or ``decoupled_weight_decay``): ``lr x weight_decay >= reg_decoupled_min`` per step.
    """
    out: list[float] = []
    for opt in view.facts.optimizers:
        decoupled = str(opt.get("class", "")).lower().startswith("adamw")
        for group in opt.get("param_groups") or []:
            wd, lr = group.get("weight_decay", 0.0), group.get("lr", 0.0)
            if not isinstance(wd, (int, float)) or isinstance(wd, bool) or not wd > 0:
                continue
            if decoupled or group.get("decoupled_weight_decay") is True:
                if isinstance(lr, (int, float)) and float(lr) * float(wd) >= t.reg_decoupled_min:
                    out.append(float(wd))
            elif float(wd) >= t.reg_coupled_min:
                out.append(float(wd))
    return out


@rule(
    "regularization_too_strong",
    requires=(Q.LOSS, Q.WEIGHT_NORM),
    rank=165,
    thresholds=RegularizationThresholds,
    summary="a strong weight decay (coupled ≥ 0.05, or AdamW lr x decay ≥ 5e-4 per step) or a penalty term summed "
    "into the loss, and the weight matrices' median norm shrank "
    "below 70% of its first value while the training loss stayed above 60% of its reference (baseline loss, ln C "
    "or its start)",
)
def regularization_too_strong(view: RunView, t: RegularizationThresholds) -> list[Diagnosis]:
    """Weight decay that wins over the data: the weights shrink while the loss stays high."""
    decays = weight_decays(view, t)
    penalty = task_of(view).extra_terms  # the loss node sits under a sum with other terms (an L2 penalty?)
    if (not decays or max(decays) <= 0) and not penalty:
        return []
    norms = view.matrix(Q.WEIGHT_NORM)
    names = weight_matrices(view, [str(c) for c in norms.columns])
    c = loss_curve(view, t)
    if norms.empty or not names or c is None or len(c.values) < t.flat_window:
        return []
    m = norms[names].dropna(how="all")
    if len(m) < 2:
        return []
    first, last = m.iloc[0], m.iloc[-1]
    ratio = float(np.nanmedian((last / first).to_numpy(dtype=float)))
    if not ratio < t.reg_shrink:
        return []
    found = baseline_of(view, t)
    ref = found[0] if found is not None else c.start
    level = float(np.median(c.values[-t.flat_window :]))
    if not (ref > 0 and level >= t.reg_loss_frac * ref):
        return []
    wd = max(decays, default=0.0)
    what = f"with weight decay {wd:g}" if wd > 0 else "with a penalty term added to the loss"
    return [
        Diagnosis(
            code="regularization_too_strong",
            severity="warning",
            step=int(m.index[0]),
            layer=None,
            message=(
                f"The regularisation is too strong: {what} the weights shrank to {ratio:.0%} of "
                f"their initial norm while the training loss stayed at {g(level)} ({level / ref:.0%} of "
                f"{'the constant-prediction loss' if found is not None else 'its start'} {g(ref)})."
            ),
            evidence={"weight_decay": wd, "weight_norm_ratio": ratio, "loss": level, "reference_loss": ref},
            suggestions=[
                f"Lower the weight decay (or the penalty's coefficient) 10-100x{_example(wd)}; "
                "the lecture: first make the model fit, then add regularisation until the validation gap closes.",
                "With Adam, use AdamW's decoupled weight decay (L2 in Adam is scaled differently).",
                "Check dropout rates and any penalty terms added to the loss.",
            ],
        )
    ]


def _example(wd: float) -> str:
    return f" (e.g. to {wd / 30:.1g})" if wd > 0 else ""
