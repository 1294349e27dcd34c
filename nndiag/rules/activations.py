"""Activation rules: non-finite values, collapse with depth, saturation, dead units, sigmoid hidden layers.

Example:
    >>> import pandas as pd
    >>> from nndiag.rules.config import AdvisorConfig
    >>> from nndiag.rules.activations import nonfinite_activations
    >>> from nndiag.rules.view import RunView
    >>> h = pd.DataFrame({"step": [3, 3], "layer": ["fc1", "fc2"], "stat": ["nonfinite"] * 2, "value": [0.0, 12.0]})
    >>> view = RunView(h, {"forward_order": ["fc1", "fc2"]})
    >>> [(d.code, d.layer, d.step) for d in nonfinite_activations(view, AdvisorConfig())]
    [('nonfinite_activations', 'fc2', 3)]
"""

from __future__ import annotations

from nndiag.diagnosis import Diagnosis
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView


@rule("nonfinite_activations", requires=("nonfinite",))
def nonfinite_activations(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """NaN/Inf inside the network: report the first layer in forward order, at its first step.

    Also emits ``nonfinite_input`` when the model input itself holds NaN/Inf.
    """
    m = view.matrix("nonfinite")
    if m.empty:
        return []
    out: list[Diagnosis] = []
    bad = m.fillna(0) > 0
    if "input" in bad.columns and bad["input"].any():
        step = int(bad.index[bad["input"].to_numpy()][0])
        count = float(m.loc[step, "input"])
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
    layers = [c for c in bad.columns if c != "input" and bad[c].any()]
    if layers:
        first_step = min(int(bad.index[bad[c].to_numpy()][0]) for c in layers)
        at_first = [c for c in layers if bool(bad.loc[first_step, c])]
        layer = view.ordered(at_first)[0]
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
