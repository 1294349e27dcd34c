"""Non-finite values inside the run: NaN/Inf in the model input, or first appearing inside the network.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.nonfinite import nonfinite_activations
    >>> h = pd.DataFrame({"step": [3, 3], "layer": ["fc1", "fc2"], "stat": ["nonfinite"] * 2, "value": [0.0, 12.0]})
    >>> view = RunView(h, {"forward_order": ["fc1", "fc2"]})
    >>> [(d.code, d.layer, d.step) for d in nonfinite_activations(view, AdvisorConfig())]
    [('nonfinite_activations', 'fc2', 3)]
"""

from __future__ import annotations

import pandas as pd

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.registry import NoThresholds, rule
from nndiag.rules.view import RunView


def _nonfinite(view: RunView) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The ``nonfinite`` counts (steps x layers) and where they are positive, or ``None`` if not recorded."""
    m = view.matrix(Q.NONFINITE)
    if m.empty:
        return None
    return m, m.fillna(0) > 0


@rule(
    "nonfinite_input",
    requires=(Q.NONFINITE,),
    severity="error",
    rank=100,
    summary="the model input holds NaN/Inf",
)
def nonfinite_input(view: RunView, t: NoThresholds) -> list[Diagnosis]:
    """NaN/Inf in the model input: report its first step."""
    found = _nonfinite(view)
    if found is None:
        return []
    m, bad = found
    out: list[Diagnosis] = []
    if "input" in bad.columns and bad["input"].any():
        step = int(bad.index[bad["input"].to_numpy()][0])
        count = float(m.loc[step, Q.INPUT_LAYER])
        out.append(
            Diagnosis(
                code="nonfinite_input",
                severity="error",
                step=step,
                layer="input",
                message=f"The model input holds {count:.0f} NaN/Inf values at step {step}.",
                evidence={"nonfinite": count, "first_step": step},
                suggestions=[
                    "Clean the data: find the samples with NaN/Inf (torch.isfinite) and fix or drop them.",
                    "Check the preprocessing for division by zero (e.g. normalising a constant feature).",
                ],
            )
        )
    return out


@rule(
    "nonfinite_activations",
    requires=(Q.NONFINITE,),
    severity="error",
    rank=310,
    explained_by=("nonfinite_input",),
    summary="NaN/Inf inside the network: the first layer in forward order, at its first step",
)
def nonfinite_activations(view: RunView, t: NoThresholds) -> list[Diagnosis]:
    """NaN/Inf inside the network: report the first layer in forward order, at its first step."""
    found = _nonfinite(view)
    if found is None:
        return []
    m, bad = found
    out: list[Diagnosis] = []
    layers = [c for c in bad.columns if c != Q.INPUT_LAYER and bad[c].any()]
    first = view.first_nonfinite(layers) if layers else None
    if first is not None:
        layer, first_step = first
        count = float(m.loc[first_step, layer])
        out.append(
            Diagnosis(
                code="nonfinite_activations",
                severity="error",
                step=first_step,
                layer=layer,
                message=(
                    f"NaN/Inf first appears inside the network in {layer} at step {first_step} ({count:.0f} values)."
                ),
                evidence={"nonfinite": count, "first_step": first_step, "layers_affected": float(len(layers))},
                suggestions=[
                    f"Look at what {layer} computes: log/sqrt/division of values that can reach 0 or below.",
                    "Lower the learning rate and clip gradients: exploding weights overflow activations.",
                    "Under fp16 mixed precision, overflow (> 65504) gives Inf: use bf16 or a GradScaler.",
                ],
            )
        )
    return out
