"""Activation rules: saturated tanh/sigmoid layers and dead ReLU units.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.activations import dead_units
    >>> rows = [(s, "relu", "dead_frac", 0.9) for s in range(3)]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> relu = {"kind": "activation", "activation": "relu", "out_shape": [32, 10]}
    >>> facts = {"forward_order": ["fc", "relu", "out"],
    ...          "layers": {"fc": {"kind": "linear"}, "relu": relu, "out": {"kind": "linear"}}}
    >>> [(d.code, d.layer) for d in dead_units(RunView(h, facts), AdvisorConfig())]
    [('dead_units', 'relu')]

Other layer rules: :mod:`nndiag.rules.nonfinite`, :mod:`nndiag.rules.collapse`,
:mod:`nndiag.rules.architecture`; shared helpers in :mod:`nndiag.rules.layers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.collapse import activation_collapse
from nndiag.rules.layers import (
    HARD_ZERO_ACTIVATIONS,
    DeadFracThreshold,
    InputScaleThresholds,
    SustainedThresholds,
    describe,
    first_step,
    has_weight_layer_after,
    input_unscaled,
    is_norm,
    loss_falling,
    sustained_since,
)
from nndiag.rules.nonfinite import nonfinite_activations, nonfinite_input
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView

__all__ = [
    "HARD_ZERO_ACTIVATIONS",
    "activation_collapse",
    "dead_units",
    "describe",
    "first_step",
    "is_norm",
    "nonfinite_activations",
    "nonfinite_input",
    "saturated_activations",
    "sustained_since",
]


@dataclass(frozen=True)
class SaturationThresholds(SustainedThresholds, InputScaleThresholds):
    """When a tanh/sigmoid layer counts as saturated."""

    sat_frac: float = 0.5  # > 50% of a tanh/sigmoid layer's outputs saturated


@dataclass(frozen=True)
class DeadUnitsThresholds(SustainedThresholds, InputScaleThresholds, DeadFracThreshold):
    """When a ReLU layer counts as dead."""

    dead_min_samples: int = 8  # dead_frac is per batch: judged only over >= 8 samples (x positions) per unit (at
    # batch 1 a healthy unit is off half the time; at 8 a unit active 15% of the time looks dead in 27% of batches)


_SATURATED_AT = {
    "tanh": "|y| >= 0.99",
    "softsign": "|y| >= 0.99",
    "sigmoid": "y <= 0.01 or y >= 0.99",
}


@rule(
    "saturated_activations",
    requires=(Q.SAT_FRAC,),
    severity=("info", "warning"),
    rank=230,
    thresholds=SaturationThresholds,
    summary="`sat_frac` > 0.5 sustained in a hidden tanh/sigmoid/hardtanh layer (not the output layer); info "
    "while the loss still falls ≥ 10% over its last 50 steps (or quarter of the run)",
)
def saturated_activations(view: RunView, t: SaturationThresholds) -> list[Diagnosis]:
    """Hidden tanh/sigmoid/hardtanh layers with most outputs in the flat region (``sat_frac``).

    Output layers (no weight layer after them, e.g. the sigmoid of a confident binary
    classifier) saturate legitimately and are skipped. One diagnosis names the first such layer.
    """
    m = view.matrix(Q.SAT_FRAC)
    if m.empty:
        return []
    hits: list[tuple[str, int]] = []
    for name in m.columns:
        if view.forward_order and not has_weight_layer_after(view, str(name)):
            continue
        col = m[name].dropna()
        start = sustained_since(col > t.sat_frac, t.sustained_checks)
        if start is not None:
            hits.append((str(name), start))
    if not hits:
        return []
    layer, start = hits[0]
    frac = float(m[layer].dropna().iloc[-1])
    act = view.layer(layer).get("activation") or ""
    where = _SATURATED_AT.get(act, "at its clip values")
    more = f"; {len(hits)} layers are saturated" if len(hits) > 1 else ""
    from_start = start == first_step(view)
    suggestions = [
        "Initialise with Xavier (std 1/sqrt(fan_in), nn.init.xavier_normal_): large weights push the "
        "pre-activations into the flat region where the gradient is ~0.",
        "Lower the learning rate: large updates grow the weights until the units saturate.",
        "Normalise the inputs (zero mean, unit variance) and add BatchNorm before the activation.",
        "Use ReLU (or GELU) instead of tanh/sigmoid in hidden layers.",
    ]
    if not from_start:
        suggestions[0], suggestions[1] = suggestions[1], suggestions[0]
    if input_unscaled(view, t):
        suggestions.insert(0, suggestions.pop(2))
    # while the loss still falls well the saturation is not (yet) what stops training: advice only
    progressing = loss_falling(view)
    return [
        Diagnosis(
            code="saturated_activations",
            severity="info" if progressing else "warning",
            step=start,
            layer=layer,
            message=f"{frac:.0%} of the outputs of {describe(view, layer)} are saturated ({where}){more}.",
            evidence={"sat_frac": frac, "layers_saturated": float(len(hits))},
            suggestions=suggestions,
        )
    ]


def dead_unit_layers(view: RunView, names: list[str]) -> list[str]:
    """The layers whose ``dead_frac`` means dead ReLU units, in forward order.

    ReLU/ReLU6 modules; and dropout/pooling layers fed by a linear/conv/norm layer through a
    functional ReLU. Dropout, pooling or flatten layers after a ReLU module repeat that module's
    deadness and are skipped, as are leaky/smooth activations (their units never stop learning)
    and non-negative outputs that are not ReLUs (softmax, sigmoid).
    """
    order = view.forward_order
    out = []
    for name in view.ordered(names):
        info = view.layer(name)
        kind = info.get("kind")
        if kind == "activation":
            if info.get("activation") in HARD_ZERO_ACTIVATIONS:
                out.append(name)
            continue
        if kind not in ("dropout", "pooling") or name not in order:
            continue
        for prev in reversed(order[: order.index(name)]):
            pkind = view.layer(prev).get("kind")
            if pkind in ("dropout", "pooling", "other"):
                continue
            if pkind in ("linear", "conv", "norm"):
                out.append(name)
            break
    return out


def samples_per_unit(view: RunView, name: str) -> float:
    """Samples (batch x positions) over which each unit's ``dead_frac`` maximum is taken (inf when unknown).

    Example:
        >>> import pandas as pd
        >>> samples_per_unit(RunView(pd.DataFrame(), {"layers": {"fc": {"out_shape": [4, 64]}}}), "fc")
        4.0
    """
    shape = view.layer(name).get("out_shape") or []
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        return math.inf
    total = float(math.prod(shape))
    if len(shape) == 1:
        return 1.0
    if len(shape) == 2:
        return total / shape[-1]
    if len(shape) == 3:  # (batch, time, features) or (batch, channels, length): take the fewer samples
        return min(total / shape[1], total / shape[2])
    return total / shape[1]


def _feeding_layer(view: RunView, name: str) -> str | None:
    """The linear/conv layer whose output the activation ``name`` transforms."""
    order = view.forward_order
    if name not in order:
        return None
    for prev in reversed(order[: order.index(name)]):
        kind = view.layer(prev).get("kind")
        if kind in ("linear", "conv"):
            return prev
        if kind not in ("norm", "dropout", "pooling", "other"):
            return None
    return None


@rule(
    "dead_units",
    requires=(Q.DEAD_FRAC,),
    rank=240,
    thresholds=DeadUnitsThresholds,
    summary="`dead_frac` > 0.5 sustained in a ReLU layer (or a dropout/pool fed by a functional ReLU), judged only "
    "over ≥ 8 samples per unit; reported once per ReLU, not again on the pool/dropout after it",
)
def dead_units(view: RunView, t: DeadUnitsThresholds) -> list[Diagnosis]:
    """ReLU layers in which more than ``t.dead_frac`` of the units never activate over a batch.

    Layers whose units are seen on fewer than ``dead_min_samples`` samples per batch are not judged.
    One diagnosis names the first such layer in forward order.
    """
    m = view.matrix(Q.DEAD_FRAC)
    if m.empty:
        return []
    hits: list[tuple[str, int]] = []
    for name in dead_unit_layers(view, [str(c) for c in m.columns]):
        if samples_per_unit(view, name) < t.dead_min_samples:
            continue  # a unit seen on a handful of samples looks dead by chance
        col = m[name].dropna()
        start = sustained_since(col > t.dead_frac, t.sustained_checks)
        if start is not None:
            hits.append((name, start))
    if not hits:
        return []
    layer, start = hits[0]
    frac = float(m[layer].dropna().iloc[-1])
    evidence = {"dead_frac": frac, "layers_affected": float(len(hits))}
    suggestions = [
        "Lower the learning rate (e.g. by 10x): a too-large update pushes units to inputs that are negative "
        "for every sample, and a dead ReLU gets no gradient to recover.",
        "Initialise with He (nn.init.kaiming_normal_, std sqrt(2/fan_in)) and a zero or small positive bias "
        "(0.01) so the units start active.",
        "Use LeakyReLU, ELU or GELU, which never die.",
        "Add BatchNorm before the ReLU so its inputs stay centred.",
    ]
    if start == first_step(view):  # dead from the start: initialisation, not the learning rate
        suggestions[0], suggestions[1] = suggestions[1], suggestions[0]
    if input_unscaled(view, t):  # a huge input makes huge first updates
        suggestions.insert(0, "Normalise the inputs (zero mean, unit variance): their scale drives the units' inputs.")
    feeder = _feeding_layer(view, layer)
    bias = view.facts.init.get(f"{feeder}.bias") if feeder else None
    if bias and float(bias.get("mean", 0.0)) < 0 and abs(float(bias["mean"])) > 2 * float(bias.get("std", 0.0)):
        evidence["bias_init_mean"] = float(bias["mean"])
        suggestions.insert(
            0, f"{feeder}.bias was initialised at {float(bias['mean']):.3g}: set it to 0 or a small positive value."
        )
    more = f" ({len(hits)} ReLU layers are more than {t.dead_frac:.0%} dead)" if len(hits) > 1 else ""
    return [
        Diagnosis(
            code="dead_units",
            severity="warning",
            step=start,
            layer=layer,
            message=f"{frac:.0%} of the units of {describe(view, layer)} never activate{more}.",
            evidence=evidence,
            suggestions=suggestions,
        )
    ]
