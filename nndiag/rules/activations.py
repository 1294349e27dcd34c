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

Layer symptoms (collapse, saturation, dead units) must hold at ``cfg.sustained_checks``
consecutive logging steps up to the end of the view; ``step`` is where that run began.
"""

from __future__ import annotations

import math

import pandas as pd

from nndiag.diagnosis import Diagnosis
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView

# Activations whose zero region passes no gradient at all (a unit whose input is always negative is dead).
HARD_ZERO_ACTIVATIONS = ("relu", "relu6")
# Activations that are not elementwise squashing functions of one unit (never part of a depth chain).
NON_ELEMENTWISE = ("softmax", "log_softmax")
# Layer kinds that renormalise, restart or rescale the signal: a depth chain of activation stds stops
# there (a global average pool alone divides the std by the spatial size).
CHAIN_BREAKERS = ("norm", "recurrent", "attention", "embedding", "pooling")
WEIGHT_KINDS = ("linear", "conv", "recurrent", "attention")


def sustained_since(mask: pd.Series, checks: int) -> int | None:
    """First step of the trailing run of ``True`` in ``mask`` (indexed by step) if it spans >= ``checks`` steps.

    Example:
        >>> import pandas as pd
        >>> sustained_since(pd.Series([True, False, True, True, True], index=[0, 1, 2, 3, 4]), 3)
        2
        >>> sustained_since(pd.Series([True, True, False], index=[0, 1, 2]), 1) is None
        True
    """
    values = mask.sort_index().to_numpy(dtype=bool)
    n = 0
    for v in values[::-1]:
        if not v:
            break
        n += 1
    if n == 0 or n < checks:
        return None
    return int(mask.sort_index().index[len(values) - n])


def first_step(view: RunView) -> int:
    """The first recorded step of the run (0 for an empty one)."""
    return int(view.history.step.min()) if len(view.history) else 0


def is_norm(view: RunView, name: str) -> bool:
    """A normalisation layer, including other libraries' (``LlamaRMSNorm``, ``T5LayerNorm``)."""
    info = view.layer(name)
    return info.get("kind") == "norm" or "norm" in str(info.get("module_type", "")).lower()


def has_weight_layer_after(view: RunView, name: str) -> bool:
    """Whether a linear/conv/recurrent/attention layer runs after ``name`` in forward order."""
    order = view.forward_order
    if name not in order:
        return False
    return any(view.layer(n).get("kind") in WEIGHT_KINDS for n in order[order.index(name) + 1 :])


def describe(view: RunView, name: str) -> str:
    """``"features.1 (ReLU)"``: a layer with its module type where known."""
    kind = view.layer(name).get("module_type")
    return f"{name} ({kind})" if kind else name


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


# -- activation collapse -------------------------------------------------------------------------


def _collapse_segments(view: RunView) -> list[list[str]]:
    """Runs of layers whose activation std is compared along depth, split at normalisation layers.

    The activation modules that feed a later weight layer when the model has enough of them;
    otherwise (functional activations) the linear/conv layers but the last (the output layer).
    """
    order = view.forward_order
    acts = [
        n
        for n in order
        if view.layer(n).get("kind") == "activation"
        and view.layer(n).get("activation") not in NON_ELEMENTWISE
        and has_weight_layer_after(view, n)
    ]
    if len(acts) >= 2:
        members = set(acts)
    else:
        weights = [n for n in order if view.layer(n).get("kind") in ("linear", "conv")]
        members = set(weights[:-1])
    segments: list[list[str]] = [[]]
    for n in order:
        if is_norm(view, n) or view.layer(n).get("kind") in CHAIN_BREAKERS:
            segments.append([])
        elif n in members:
            segments[-1].append(n)
    return [seg for seg in segments if len(seg) >= 2]


def _collapse_at(
    stds: pd.Series, dead: pd.Series | None, segments: list[list[str]], cfg: AdvisorConfig
) -> tuple[list[str], float] | None:
    """The first collapsing chain at one step: (layers, per-layer ratio), else ``None``.

    Fast collapse (few layers, each link < ``collapse_link``, <= ``collapse_ratio`` per layer), or slow
    collapse (>= ``collapse_slow_links`` links each < ``collapse_slow_link``, shrinking to at most
    ``collapse_slow_total`` of the first std overall, whatever the final std).
    """
    for fast in (True, False):
        link = cfg.collapse_link if fast else cfg.collapse_slow_link
        for seg in segments:
            chain: list[str] = []
            for name in seg:
                std = float(stds.get(name, math.nan))
                dead_frac = float(dead.get(name, math.nan)) if dead is not None else math.nan
                usable = math.isfinite(std) and std > 0 and not dead_frac > cfg.dead_frac  # dead layers: dead_units
                if chain and usable and std < link * float(stds[chain[-1]]):
                    chain.append(name)
                    continue
                found = _collapsed(chain, stds, cfg, fast)
                if found is not None:
                    return found
                chain = [name] if usable else []
            found = _collapsed(chain, stds, cfg, fast)
            if found is not None:
                return found
    return None


def _collapsed(chain: list[str], stds: pd.Series, cfg: AdvisorConfig, fast: bool) -> tuple[list[str], float] | None:
    """``(chain, ratio per layer)`` when the chain is a fast or a slow collapse (see :func:`_collapse_at`)."""
    links = len(chain) - 1
    if links < (cfg.collapse_min_layers if fast else cfg.collapse_slow_links):
        return None
    first, last = float(stds[chain[0]]), float(stds[chain[-1]])
    per_layer = (last / first) ** (1.0 / links)
    if fast and per_layer <= cfg.collapse_ratio and last < cfg.collapse_std:
        return chain, per_layer
    if not fast and last / first <= cfg.collapse_slow_total:
        return chain, per_layer
    return None


@rule("activation_collapse", requires=("act_std",))
def activation_collapse(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Activation std shrinking geometrically with depth (the lecture's 0.01*randn tanh table).

    A chain of at least ``collapse_min_layers`` consecutive activation layers (no normalisation
    layer in between), each std below ``collapse_link`` times the previous one, shrinking by at
    most ``collapse_ratio`` per layer on (geometric) average and ending below ``collapse_std``.
    """
    m = view.matrix("act_std")
    segments = _collapse_segments(view)
    if m.empty or not segments:
        return []
    dead = view.matrix("dead_frac")
    # Only the trailing run of collapsed steps matters (see sustained_since): walk back from the last
    # logging step and stop at the first step without a collapse, so a check does not grow with the run.
    found: dict[int, tuple[list[str], float]] = {}
    m = m.sort_index()
    for step in reversed(m.index):
        dead_row = dead.loc[step] if not dead.empty and step in dead.index else None
        hit = _collapse_at(m.loc[step], dead_row, segments, cfg)
        if hit is None:
            break
        found[int(step)] = hit
    if not found or len(found) < cfg.sustained_checks:
        return []
    start = min(found)
    last = int(m.index[-1])
    chain, per_layer = found[last]
    stds = m.loc[last]
    low = next((n for n in chain if float(stds[n]) < cfg.collapse_std), chain[-1])
    first_std, last_std = float(stds[chain[0]]), float(stds[chain[-1]])
    acts = {view.layer(n).get("activation") for n in chain} | {
        view.layer(n).get("activation") for n in view.forward_order if view.layer(n).get("kind") in ("linear", "conv")
    }
    relu_like = bool(acts & {"relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "gelu", "silu", "mish", "celu"})
    init = (
        "He initialisation (nn.init.kaiming_normal_, std sqrt(2/fan_in)) for the ReLU layers"
        if relu_like
        else "Xavier initialisation (std 1/sqrt(fan_in), nn.init.xavier_normal_) for the tanh/sigmoid layers"
    )
    return [
        Diagnosis(
            code="activation_collapse",
            severity="warning",
            step=start,
            layer=low,
            message=(
                f"Activations shrink x{per_layer:.2f} per layer with depth, from std {first_std:.3g} at {chain[0]} "
                f"to {last_std:.3g} at {chain[-1]} over {len(chain)} layers."
            ),
            evidence={
                "std_first": first_std,
                "std_last": last_std,
                "ratio_per_layer": per_layer,
                "layers": float(len(chain)),
            },
            suggestions=[
                f"Re-initialise the weights with {init}: a too small weight scale (e.g. 0.01*randn) "
                "multiplies the signal by less than 1 at every layer.",
                "Add BatchNorm (or LayerNorm) between the linear/conv layers and their activations.",
                "Use fewer layers or residual connections so that the signal does not pass through every layer.",
            ],
        )
    ]


# -- saturation ----------------------------------------------------------------------------------

_SATURATED_AT = {
    "tanh": "|y| >= 0.99",
    "softsign": "|y| >= 0.99",
    "sigmoid": "y <= 0.01 or y >= 0.99",
}


@rule("saturated_activations", requires=("sat_frac",))
def saturated_activations(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Hidden tanh/sigmoid/hardtanh layers with most outputs in the flat region (``sat_frac``).

    Output layers (no weight layer after them, e.g. the sigmoid of a confident binary
    classifier) saturate legitimately and are skipped. One diagnosis names the first such layer.
    """
    m = view.matrix("sat_frac")
    if m.empty:
        return []
    hits: list[tuple[str, int]] = []
    for name in m.columns:
        if view.forward_order and not has_weight_layer_after(view, str(name)):
            continue
        col = m[name].dropna()
        start = sustained_since(col > cfg.sat_frac, cfg.sustained_checks)
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
    if _input_unscaled(view, cfg):
        suggestions.insert(0, suggestions.pop(2))
    return [
        Diagnosis(
            code="saturated_activations",
            severity="warning",
            step=start,
            layer=layer,
            message=f"{frac:.0%} of the outputs of {describe(view, layer)} are saturated ({where}){more}.",
            evidence={"sat_frac": frac, "layers_saturated": float(len(hits))},
            suggestions=suggestions,
        )
    ]


def _input_unscaled(view: RunView, cfg: AdvisorConfig) -> bool:
    """Whether the last recorded model input is far from zero mean / unit scale."""
    mean, std = view.series("act_mean", "input"), view.series("act_std", "input")
    if mean.empty or std.empty:
        return False
    mu, sd = abs(float(mean.iloc[-1])), float(std.iloc[-1])
    return mu > cfg.input_mean_abs or sd > cfg.input_std_max or sd < cfg.input_std_min


# -- dead units ----------------------------------------------------------------------------------


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


@rule("dead_units", requires=("dead_frac",))
def dead_units(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """ReLU layers in which more than ``cfg.dead_frac`` of the units never activate over a batch.

    Layers whose units are seen on fewer than ``dead_min_samples`` samples per batch are not judged.
    One diagnosis names the first such layer in forward order.
    """
    m = view.matrix("dead_frac")
    if m.empty:
        return []
    hits: list[tuple[str, int]] = []
    for name in dead_unit_layers(view, [str(c) for c in m.columns]):
        if samples_per_unit(view, name) < cfg.dead_min_samples:
            continue  # a unit seen on a handful of samples looks dead by chance
        col = m[name].dropna()
        start = sustained_since(col > cfg.dead_frac, cfg.sustained_checks)
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
    if _input_unscaled(view, cfg):  # a huge input makes huge first updates
        suggestions.insert(0, "Normalise the inputs (zero mean, unit variance): their scale drives the units' inputs.")
    feeder = _feeding_layer(view, layer)
    bias = (view.facts.get("init") or {}).get(f"{feeder}.bias") if feeder else None
    if bias and float(bias.get("mean", 0.0)) < 0 and abs(float(bias["mean"])) > 2 * float(bias.get("std", 0.0)):
        evidence["bias_init_mean"] = float(bias["mean"])
        suggestions.insert(
            0, f"{feeder}.bias was initialised at {float(bias['mean']):.3g}: set it to 0 or a small positive value."
        )
    more = f" ({len(hits)} ReLU layers are more than {cfg.dead_frac:.0%} dead)" if len(hits) > 1 else ""
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


# -- sigmoid in hidden layers --------------------------------------------------------------------

# Name fragments of modules where a sigmoid is a gate by design (attention, squeeze-excitation, RNN cells).
_GATE_HINTS = ("gate", "gating", "attn", "attention", "excit", "squeeze", "lstm", "gru", "rnn", "cell", "glu", "se")


def _is_gate(name: str) -> bool:
    tokens = {t for part in name.lower().split(".") for t in part.split("_")}
    return any(t.startswith(h) if h != "se" else t == "se" for t in tokens for h in _GATE_HINTS)


def _feeds_next_weight_layer(view: RunView, name: str) -> bool:
    """Whether the sigmoid's output is the input of the next weight layer (a hidden layer, not a gate).

    The next linear layer must take the sigmoid's width as its fan-in; the next conv layer must take
    its channels (fan-in a multiple of them) at a spatial size above 1x1 (a channel gate is 1x1).
    """
    order = view.forward_order
    shape = view.layer(name).get("out_shape") or []
    if name not in order or not shape:
        return False
    for nxt in order[order.index(name) + 1 :]:
        info = view.layer(nxt)
        kind = info.get("kind")
        if kind in ("recurrent", "attention", "embedding", "activation"):
            return False
        if kind not in ("linear", "conv"):
            continue
        fan_in = info.get("fan_in")
        if not isinstance(fan_in, int) or fan_in <= 0:
            return False
        if kind == "linear":
            return bool(shape[-1] == fan_in)
        if len(shape) < 3 or not isinstance(shape[1], int) or shape[1] < 2:
            return False
        spatial = math.prod(int(d) for d in shape[2:])
        return spatial > 1 and fan_in % int(shape[1]) == 0
    return False


@rule("sigmoid_hidden_layer")
def sigmoid_hidden_layer(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Sigmoid used as the activation of hidden layers (the lecture: only for outputs and gates).

    A ``Sigmoid`` module is hidden when its output feeds the next linear/conv layer; output
    sigmoids, LSTM/GRU gates (inside the recurrent module) and gating/attention modules are not.
    """
    hidden = [
        n
        for n in view.forward_order
        if view.layer(n).get("kind") == "activation"
        and view.layer(n).get("activation") == "sigmoid"
        and not _is_gate(n)
        and _feeds_next_weight_layer(view, n)
    ]
    if not hidden:
        return []
    more = f" (and {len(hidden) - 1} more hidden layer{'s' if len(hidden) > 2 else ''})" if len(hidden) > 1 else ""
    return [
        Diagnosis(
            code="sigmoid_hidden_layer",
            severity="info",
            step=first_step(view),
            layer=hidden[0],
            message=(
                f"{describe(view, hidden[0])} uses sigmoid as a hidden activation{more}: it saturates, is not "
                "zero-centred and passes at most 0.25 of the gradient."
            ),
            evidence={"hidden_sigmoid_layers": float(len(hidden))},
            suggestions=[
                "Use ReLU (with He initialisation) or GELU in hidden layers; keep sigmoid for binary outputs "
                "and gates.",
                "If a bounded activation is needed, tanh is zero-centred and saturates less quickly.",
            ],
        )
    ]
