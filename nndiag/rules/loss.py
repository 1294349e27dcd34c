"""Loss-curve rules: non-finite, diverging, oscillating, flat loss; initial loss; over/underfitting.

Example:
    >>> import pandas as pd
    >>> from nndiag.rules.config import AdvisorConfig
    >>> from nndiag.rules.loss import nonfinite_loss
    >>> from nndiag.rules.view import RunView
    >>> losses = [2.3, 2.2, float("inf")]
    >>> h = pd.DataFrame({"step": [0, 1, 2], "layer": [""] * 3, "stat": ["loss"] * 3, "value": losses})
    >>> [(d.code, d.step, d.severity) for d in nonfinite_loss(RunView(h), AdvisorConfig())]
    [('nonfinite_loss', 2, 'error')]
"""

from __future__ import annotations

import math

from nndiag.diagnosis import Diagnosis
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView


@rule("nonfinite_loss", requires=("loss",))
def nonfinite_loss(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """NaN/Inf loss: name the first step and, where recorded, the first input/layer with NaN/Inf."""
    loss = view.series("loss")
    bad = loss[~loss.map(math.isfinite)]
    if bad.empty:
        return []
    first = int(bad.index[0])
    evidence: dict[str, float] = {"first_step": first, "nonfinite_steps": float(len(bad))}
    where = ""
    source = _first_nonfinite_layer(view, upto=first)
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


def _first_nonfinite_layer(view: RunView, upto: int) -> tuple[str, int] | None:
    """(layer, step) of the earliest recorded non-finite activation, first in forward order."""
    m = view.matrix("nonfinite")
    if m.empty:
        return None
    bad = m[m.index <= upto].fillna(0) > 0
    rows = bad.any(axis=1)
    if not rows.any():
        return None
    step = int(rows.index[rows.to_numpy()][0])
    layers = [str(c) for c in bad.columns[bad.loc[step].to_numpy()]]
    return view.ordered(layers)[0], step
