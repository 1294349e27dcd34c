"""Parameter rules: weights that never change, initial weight scale, symmetric initialisation.

Example:
    >>> import pandas as pd
    >>> from nndiag.rules.config import AdvisorConfig
    >>> from nndiag.rules.params import weights_not_updating
    >>> from nndiag.rules.view import RunView
    >>> h = pd.DataFrame([(s, "fc.weight", "update_ratio", 0.0) for s in range(4)],
    ...                  columns=["step", "layer", "stat", "value"])
    >>> facts = {"params": {"fc.weight": {"trainable": True, "in_optimizer": False, "layer": "fc"}},
    ...          "optimizers": [{"class": "SGD"}]}
    >>> [(d.code, d.layer, d.severity) for d in weights_not_updating(RunView(h, facts), AdvisorConfig())]
    [('weights_not_updating', 'fc.weight', 'error')]
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from nndiag.diagnosis import Diagnosis, Severity
from nndiag.rules.activations import HARD_ZERO_ACTIVATIONS, describe, first_step, is_norm, sustained_since
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView

RELU_FAMILY = ("relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "celu", "gelu", "silu", "mish")
XAVIER_FAMILY = ("tanh", "sigmoid", "softsign", "hardtanh", "hardsigmoid", "selu")  # selu: LeCun normal, same std

# -- weights not updating ------------------------------------------------------------------------

_CAUSES: dict[str, tuple[Severity, str, list[str]]] = {
    "not_in_optimizer": (
        "error",
        "not in any optimizer",
        [
            "Pass every trainable parameter to the optimizer (e.g. torch.optim.Adam(model.parameters())); "
            "create the optimizer after all layers are added to the model.",
            "If the parameters are meant to stay fixed, set requires_grad=False on them.",
        ],
    ),
    "no_gradient": (
        "warning",
        "receiving no gradient",
        [
            "Make sure the parameters are used in the forward pass that computes the loss, without "
            ".detach(), torch.no_grad() or .data in between.",
            "If they are meant to stay fixed (an unused head, a frozen part), set requires_grad=False.",
        ],
    ),
    "zero_lr": (
        "warning",
        "trained with a learning rate of 0",
        [
            "Check the learning rate and its schedule (warm-up starting at 0, a scheduler that decays to 0).",
        ],
    ),
    "other": (
        "warning",
        "receiving gradients that the optimizer step does not apply",
        [
            "Check what runs between backward() and the step: gradient clipping to 0, a hook that restores the "
            "weights, or updates below the precision of a bf16/fp16 weight (keep fp32 master weights).",
        ],
    ),
}


def _stuck(view: RunView, names: list[str]) -> pd.DataFrame:
    """Steps x parameters: True where a logging step left the parameter exactly unchanged.

    The update ratio is 0; or, where it is undefined (||w|| = 0) or not recorded, the weight norm is
    exactly the one of the previous logging step.
    """
    upd = view.matrix("update_ratio")
    wn = view.matrix("weight_norm")
    index = upd.index.union(wn.index)
    r = upd.reindex(index=index, columns=names)
    w = wn.reindex(index=index, columns=names)
    same = (w == w.shift(1)) | (w == 0)
    return (r == 0) | (r.isna() & w.notna() & same)


def _explained_by_dead_units(view: RunView, param: str, cfg: AdvisorConfig) -> bool:
    """Whether a fully dead ReLU blocks the parameter's gradient (``dead_units`` then names the cause).

    A dead ReLU after its layer passes nothing back; one feeding a weight's layer makes its input all zero.
    """
    dead = view.matrix("dead_frac")
    layer = str(view.param(param).get("layer", ""))
    order = view.forward_order
    if dead.empty or layer not in order:
        return False
    last = dead.iloc[-1]

    def fully_dead(name: str) -> bool:
        info = view.layer(name)
        return (
            info.get("kind") == "activation"
            and info.get("activation") in HARD_ZERO_ACTIVATIONS
            and name in last.index
            and float(last[name]) >= cfg.dead_full_frac
        )

    i = order.index(layer)
    if any(fully_dead(n) for n in order[i + 1 :]):
        return True
    if param.rsplit(".", 1)[-1] == "bias":
        return False
    for prev in reversed(order[:i]):
        kind = view.layer(prev).get("kind")
        if kind == "activation":
            return fully_dead(prev)
        if kind not in ("norm", "dropout", "pooling", "other"):
            return False
    return False


def _bias_before_batchnorm(view: RunView, param: str) -> bool:
    """A bias followed by BatchNorm/InstanceNorm: the normalisation subtracts it, so its gradient is ~0 by design."""
    if param.rsplit(".", 1)[-1] != "bias":
        return False
    layer = str(view.param(param).get("layer", ""))
    order = view.forward_order
    if layer not in order or view.layer(layer).get("kind") not in ("linear", "conv"):
        return False
    for nxt in order[order.index(layer) + 1 :]:
        info = view.layer(nxt)
        if info.get("kind") == "dropout":
            continue
        return bool(info.get("is_batchnorm")) or str(info.get("module_type", "")).startswith("InstanceNorm")
    return False


def _weights_first(ordered: list[str]) -> list[str]:
    """Parameters in forward order, each module's weight before its other parameters."""
    rank: dict[str, int] = {}
    for n in ordered:
        rank.setdefault(n.rsplit(".", 1)[0], len(rank))
    return sorted(ordered, key=lambda n: (rank[n.rsplit(".", 1)[0]], not n.rsplit(".", 1)[-1].startswith("weight")))


def _cause(view: RunView, param: str, since: int) -> str:
    info = view.param(param)
    if info.get("in_optimizer") is False and view.facts.get("optimizers"):
        return "not_in_optimizer"
    grads = view.matrix("grad_norm")
    if param in grads.columns:
        g = grads[param][grads.index >= since].dropna()
        if len(g) and (g == 0).all():
            return "no_gradient"
    lrs = view.history[(view.history.stat == "lr") & (view.history.step >= since)]
    if len(lrs) and (lrs.groupby("layer").value.max() == 0).any():
        return "zero_lr"
    return "other"


@rule("weights_not_updating", requires=())
def weights_not_updating(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Trainable parameters left exactly unchanged by the optimizer steps, with the cause.

    Unchanged (update ratio exactly 0) at every logging step (at least ``frozen_checks`` of them),
    or at the last ``frozen_checks_after_change`` logging steps for a parameter that moved before.
    Causes: not in any optimizer; no gradient reaches it; learning rate 0; the step does not apply
    it. Parameters whose gradient a fully dead ReLU blocks are left to ``dead_units``, those of a
    symmetric network to ``symmetric_init``; biases before BatchNorm get ~0 gradient by design. Frozen
    parameters (``requires_grad=False``) are not trainable and never reported.
    """
    params: dict[str, dict[str, Any]] = view.facts.get("params") or {}
    names = [n for n, p in params.items() if p.get("trainable", True)]
    if not names or not (view.has("update_ratio") or view.has("weight_norm")):
        return []
    stuck = _stuck(view, names)
    if stuck.empty:
        return []
    groups: dict[str, list[tuple[str, int]]] = {}
    symmetric: bool | None = None  # computed on demand: never-broken symmetric layers explain zero gradients
    for n in _weights_first(view.ordered(names)):
        if _bias_before_batchnorm(view, n):
            continue
        col = stuck[n]
        start = sustained_since(col, cfg.frozen_checks)
        if start is None:
            continue
        whole = start == int(col.index[0])
        if not whole and int((col.index >= start).sum()) < cfg.frozen_checks_after_change:
            continue
        cause = _cause(view, n, start)
        if cause == "no_gradient":
            if symmetric is None:
                symmetric = bool(symmetric_init(view, cfg))
            if symmetric or _explained_by_dead_units(view, n, cfg):
                continue
        groups.setdefault(cause, []).append((n, start))
    out = []
    for cause, hits in groups.items():
        severity, what, suggestions = _CAUSES[cause]
        first, start = hits[0]
        numel = sum(float(params[n].get("numel") or 0) for n, _ in hits)
        shown = ", ".join(n for n, _ in hits[:3]) + (f" and {len(hits) - 3} more" if len(hits) > 3 else "")
        noun = "trainable parameter" if len(hits) == 1 else f"{len(hits)} trainable parameters"
        out.append(
            Diagnosis(
                code="weights_not_updating",
                severity=severity,
                step=min(s for _, s in hits),
                layer=first,
                message=(
                    f"The {noun} {shown} never change{'s' if len(hits) == 1 else ''}: "
                    f"{'it is' if len(hits) == 1 else 'they are'} {what}."
                ),
                evidence={
                    "params": float(len(hits)),
                    "numel": numel,
                    "checks_unchanged": float(int((stuck.index >= start).sum())),
                },
                suggestions=list(suggestions),
            )
        )
    return out


# -- initial weight scale ------------------------------------------------------------------------


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


@rule("poor_init_scale", requires=())
def poor_init_scale(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Initial weight scale far (``init_scale_factor``) from the Xavier/He prescription.

    Only linear/conv layers followed by a ReLU-, tanh- or sigmoid-family activation with no
    normalisation layer right before or after (BatchNorm/LayerNorm make the scale irrelevant;
    GPT-style std-0.02 layers sit behind a LayerNorm), at least ``init_min_layers`` layers off (a
    shallow net tolerates a small init), and still off by the factor at the end of the view.
    Too-small scales are not judged in models with attention/embedding layers (residual
    architectures with fixed-std inits). PyTorch's default init is within the factor.
    """
    init: dict[str, dict[str, Any]] = view.facts.get("init") or {}
    if not init or not view.forward_order:
        return []
    residual_like = any(view.layer(n).get("kind") in ("attention", "embedding") for n in view.forward_order)
    wn = view.matrix("weight_norm")
    hits: list[tuple[str, float, float, str, str]] = []
    for layer in view.forward_order:
        info = view.layer(layer)
        name = f"{layer}.weight"
        w = init.get(name)
        act, fan_in = info.get("activation"), info.get("fan_in")
        if info.get("kind") not in ("linear", "conv") or w is None or not isinstance(fan_in, int) or fan_in <= 0:
            continue
        numel = view.param(name).get("numel") or 0
        if not view.param(name).get("trainable", True) or numel < cfg.init_min_numel or w.get("units_identical"):
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
        factor = cfg.init_scale_factor
        small = scale < expected / factor and now < expected / factor and not residual_like
        large = scale > expected * factor and now > expected * factor
        if small or large:
            hits.append((layer, scale, expected, rule_name, str(act)))
    if len(hits) < cfg.init_min_layers:
        return []
    layer, scale, expected, rule_name, act = hits[0]
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
            severity="warning",
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


# -- symmetric initialisation --------------------------------------------------------------------


def _constant(stats: dict[str, Any]) -> bool:
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


@rule("symmetric_init", requires=())
def symmetric_init(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Hidden layers initialised with identical units whose symmetry no gradient can break.

    The units of a layer start identical (constant or all-zero rows: ``init[...]["units_identical"]``)
    and the next linear/conv layer is constant too (init std 0), so every unit receives the same
    gradient forever. A zero-initialised last layer (a common trick), or identical units feeding a
    randomly initialised layer, are broken by the first gradients and not reported.
    """
    init: dict[str, dict[str, Any]] = view.facts.get("init") or {}
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
