"""Initialisation rules: initial weight scale off the Xavier/He prescription, symmetric (constant) initialisation.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.init import symmetric_init
    >>> h = pd.DataFrame({"step": [0], "layer": [""], "stat": ["loss"], "value": [1.0]})
    >>> w = {"std": 0.0, "mean": 0.1, "numel": 64, "units_identical": True}
    >>> facts = {"forward_order": ["fc1", "fc2"], "layers": {"fc1": {"kind": "linear"}, "fc2": {"kind": "linear"}},
    ...          "init": {"fc1.weight": w, "fc2.weight": w}}
    >>> [(d.code, d.layer) for d in symmetric_init(RunView(h, facts), AdvisorConfig())]
    [('symmetric_init', 'fc1.weight')]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.facts import InitFacts
from nndiag.rules.layers import describe, first_step, harmed, is_norm, loss_falling
from nndiag.rules.registry import NoThresholds, rule
from nndiag.rules.view import RunView

RELU_FAMILY = ("relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "celu", "gelu", "silu", "mish")
XAVIER_FAMILY = ("tanh", "sigmoid", "softsign", "hardtanh", "hardsigmoid", "selu")  # selu: LeCun normal, same std


@dataclass(frozen=True)
class InitScaleThresholds:
    """When an initial weight scale counts as far off its prescription."""

    init_scale_factor: float = 3.0  # weight std off the Xavier/He prescription by more than 3x (PyTorch's default
    # kaiming_uniform(a=sqrt(5)) gives std 1/sqrt(3 fan_in): 2.45x under He for ReLU, 1.73x under Xavier: silent)
    init_min_layers: int = 2  # ... in at least this many layers (lecture: small init is fine for shallow nets)
    init_min_numel: int = 64  # weight tensors smaller than this have too noisy a sample std to judge


def _prescribed_std(activation: str, fan_in: int) -> tuple[float, str] | None:
    if activation in RELU_FAMILY:
        return math.sqrt(2.0 / fan_in), "He's sqrt(2/fan_in)"
    if activation in XAVIER_FAMILY:
        return 1.0 / math.sqrt(fan_in), "Xavier's 1/sqrt(fan_in)"
    return None


def _neighbours_normalised(view: RunView, layer: str) -> bool:
    """A norm layer right before the layer (pre-norm blocks) or between it and its activation (BatchNorm)."""
    order = view.forward_order
    i = order.index(layer)
    for prev in reversed(order[:i]):
        if view.layer(prev).get("kind") in ("dropout",):
            continue
        if is_norm(view, prev):
            return True
        break
    for nxt in order[i + 1 :]:
        if is_norm(view, nxt):
            return True
        if view.layer(nxt).get("kind") != "dropout":
            return False
    return False


def _collapsed_signal(view: RunView, floor: float = 0.05) -> bool:
    """Whether some activation layer's output std has fallen below ``floor`` (a collapse with depth)."""
    m = view.matrix(Q.ACT_STD)
    acts = [c for c in m.columns if view.layer(str(c)).kind == "activation"] if not m.empty else []
    return bool(acts) and float(m[acts].iloc[-1].min(skipna=True)) < floor


@rule(
    "poor_init_scale",
    severity=("info", "warning"),
    rank=130,
    thresholds=InitScaleThresholds,
    summary="initial weight std > 3x off He (√(2/fan_in), ReLU family) or Xavier (1/√fan_in, tanh/sigmoid/linear) "
    "in ≥ 2 layers that feed such an activation with no norm layer around, still off at the end; too-small inits "
    "not judged in models with attention/embeddings (std-0.02 conventions); a warning only with signs of harm "
    "(dead or saturated units, an activation std < 0.05, a loss not falling 5%), else info",
)
def poor_init_scale(view: RunView, t: InitScaleThresholds) -> list[Diagnosis]:
    """Initial weight scale far (``init_scale_factor``) from the Xavier/He prescription.

    Only linear/conv layers followed by a ReLU-, tanh- or sigmoid-family activation with no
    normalisation layer right before or after (BatchNorm/LayerNorm make the scale irrelevant;
    GPT-style std-0.02 layers sit behind a LayerNorm), at least ``init_min_layers`` layers off (a
    shallow net tolerates a small init), and still off by the factor at the end of the view.
    Too-small scales are not judged in models with attention/embedding layers (residual
    architectures with fixed-std inits). PyTorch's default init is within the factor.
    """
    init = view.facts.init
    if not init or not view.forward_order:
        return []
    residual_like = any(view.layer(n).get("kind") in ("attention", "embedding") for n in view.forward_order)
    wn = view.matrix(Q.WEIGHT_NORM)
    hits: list[tuple[str, float, float, str, str]] = []
    for layer in view.forward_order:
        info = view.layer(layer)
        name = f"{layer}.weight"
        w = init.get(name)
        act, fan_in = info.get("activation"), info.get("fan_in")
        if info.get("kind") not in ("linear", "conv") or w is None or not isinstance(fan_in, int) or fan_in <= 0:
            continue
        numel = view.param(name).get("numel") or 0
        if not view.param(name).get("trainable", True) or numel < t.init_min_numel or w.get("units_identical"):
            continue
        target = _prescribed_std(str(act), fan_in)
        if target is None or _neighbours_normalised(view, layer):
            continue
        expected, rule_name = target
        scale = math.hypot(float(w.get("mean", 0.0)), float(w.get("std", 0.0)))
        if scale <= 0:
            continue  # constant zero: symmetric_init
        now = scale
        if name in wn.columns and len(wn[name].dropna()):
            now = float(wn[name].dropna().iloc[-1]) / math.sqrt(float(numel))
        factor = t.init_scale_factor
        small = scale < expected / factor and now < expected / factor and not residual_like
        large = scale > expected * factor and now > expected * factor
        if small or large:
            hits.append((layer, scale, expected, rule_name, str(act)))
    if len(hits) < t.init_min_layers:
        return []
    layer, scale, expected, rule_name, act = hits[0]
    # a shallow net trained with Adam often copes: warn only with evidence of harm (dead or saturated
    # units, a collapsed or flat signal), else it is advice
    harm = harmed(view) or _collapsed_signal(view) or not loss_falling(view, drop=0.05)
    fan_in = int(view.layer(layer)["fan_in"])
    direction = "smaller" if scale < expected else "larger"
    off = expected / scale if scale < expected else scale / expected
    more = f" ({len(hits)} layers are off)" if len(hits) > 1 else ""
    effect = (
        "activations shrink layer after layer and gradients vanish"
        if direction == "smaller"
        else "activations grow or saturate"
    )
    init_fn = "nn.init.kaiming_normal_(w, nonlinearity='relu')" if act in RELU_FAMILY else "nn.init.xavier_normal_(w)"
    return [
        Diagnosis(
            code="poor_init_scale",
            severity="warning" if harm else "info",
            step=first_step(view),
            layer=f"{layer}.weight",
            message=(
                f"The initial weights of {describe(view, layer)} have std {scale:.3g}, {off:.1f}x {direction} than "
                f"{rule_name} = {expected:.3g} for a {act} layer with fan-in {fan_in}{more}."
            ),
            evidence={"init_std": scale, "prescribed_std": expected, "factor": off, "layers_off": float(len(hits))},
            suggestions=[
                f"Initialise with {init_fn} (std {expected:.3g} here), or keep PyTorch's default init: "
                f"with a {direction} scale {effect}.",
                "Add BatchNorm/LayerNorm after the linear/conv layers to make training less sensitive to the scale.",
            ],
        )
    ]


def _constant(stats: InitFacts | dict[str, Any]) -> bool:
    """All elements equal (std 0 up to the rounding of the float32 mean)."""
    std, mean = float(stats.get("std", 1.0)), abs(float(stats.get("mean", 0.0)))
    return std == 0.0 or std <= 1e-6 * mean


def _next_weight_layer(view: RunView, layer: str) -> str | None:
    order = view.forward_order
    for nxt in order[order.index(layer) + 1 :]:
        kind = view.layer(nxt).get("kind")
        if kind in ("linear", "conv"):
            return nxt
        if kind in ("recurrent", "attention", "embedding"):
            return None
    return None


@rule(
    "symmetric_init",
    severity="error",
    rank=120,
    summary="a layer whose units are identical at initialisation (constant or zero weights) feeding a layer that "
    "is also constant, so symmetry can never break",
)
def symmetric_init(view: RunView, t: NoThresholds) -> list[Diagnosis]:
    """Hidden layers initialised with identical units whose symmetry no gradient can break.

    The units of a layer start identical (constant or all-zero rows: ``init[...]["units_identical"]``)
    and the next linear/conv layer is constant too (init std 0), so every unit receives the same
    gradient forever. A zero-initialised last layer (a common trick), or identical units feeding a
    randomly initialised layer, are broken by the first gradients and not reported.
    """
    init = view.facts.init
    if not init or not view.forward_order:
        return []
    hits: list[str] = []
    for layer in view.forward_order:
        w = init.get(f"{layer}.weight")
        if view.layer(layer).get("kind") not in ("linear", "conv") or not w or not w.get("units_identical"):
            continue
        if not view.param(f"{layer}.weight").get("trainable", True):
            continue
        nxt = _next_weight_layer(view, layer)
        nw = init.get(f"{nxt}.weight") if nxt else None
        if nw is not None and _constant(nw):
            hits.append(layer)
    if not hits:
        return []
    layer = hits[0]
    w = init[f"{layer}.weight"]
    value = float(w.get("mean", 0.0))
    what = "all zero" if value == 0 and float(w.get("std", 0.0)) == 0 else "identical"
    more = f" ({len(hits)} layers)" if len(hits) > 1 else ""
    return [
        Diagnosis(
            code="symmetric_init",
            severity="error",
            step=first_step(view),
            layer=f"{layer}.weight",
            message=(
                f"The units of {describe(view, layer)} start {what} and so does the next layer: every unit "
                f"computes the same function and gets the same gradient, so the symmetry is never broken{more}."
            ),
            evidence={"init_mean": value, "init_std": float(w.get("std", 0.0)), "layers": float(len(hits))},
            suggestions=[
                "Initialise the weights randomly: PyTorch's default, or nn.init.kaiming_normal_ (ReLU) / "
                "nn.init.xavier_normal_ (tanh); only biases (and at most a last layer) may start at zero.",
            ],
        )
    ]
