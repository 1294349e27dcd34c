"""Activation collapse: activation std shrinking geometrically with depth (the lecture's 0.01*randn tanh table).

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.collapse import activation_collapse
    >>> names = [f"act{i}" for i in range(5)]
    >>> rows = [(s, n, "act_std", 0.2 ** (i + 1)) for s in range(3) for i, n in enumerate(names)]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> layers = {n: {"kind": "activation", "activation": "tanh"} for n in names}
    >>> layers["out"] = {"kind": "linear"}
    >>> view = RunView(h, {"forward_order": [*names, "out"], "layers": layers})
    >>> [(d.code, d.layer) for d in activation_collapse(view, AdvisorConfig())]
    [('activation_collapse', 'act1')]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.layers import (
    CHAIN_BREAKERS,
    NON_ELEMENTWISE,
    DeadFracThreshold,
    SustainedThresholds,
    has_weight_layer_after,
    is_norm,
)
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class CollapseThresholds(SustainedThresholds, DeadFracThreshold):
    """When activation stds shrinking along depth count as a collapse."""

    collapse_ratio: float = 0.35  # geometric-mean act-std ratio per layer along the chain at most this (lecture's
    # 0.01*randn tanh table: 0.22/layer; PyTorch default init shrinks by at most 1/sqrt(6) = 0.41/layer: silent)
    collapse_link: float = 0.7  # a chain link: the next activation layer's std below this fraction of the previous
    collapse_min_layers: int = 3  # ... over at least this many consecutive links (no norm layer in between)
    collapse_std: float = 0.05  # ... ending below this std
    collapse_slow_link: float = 0.8  # a slow collapse: every link below this fraction of the previous std ...
    collapse_slow_links: int = 6  # ... over at least this many consecutive links (a deep stack) ...
    collapse_slow_total: float = 0.1  # ... shrinking >= 10x overall (Xavier init before ReLU: 0.71x per layer,
    # 0.06x over 9 hidden layers; Xavier-tanh drifts 0.78-0.95x per layer and He-ReLU ~1x: silent)


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
    stds: pd.Series, dead: pd.Series | None, segments: list[list[str]], t: CollapseThresholds
) -> tuple[list[str], float] | None:
    """The first collapsing chain at one step: (layers, per-layer ratio), else ``None``.

    Fast collapse (few layers, each link < ``collapse_link``, <= ``collapse_ratio`` per layer), or slow
    collapse (>= ``collapse_slow_links`` links each < ``collapse_slow_link``, shrinking to at most
    ``collapse_slow_total`` of the first std overall, whatever the final std).
    """
    for fast in (True, False):
        link = t.collapse_link if fast else t.collapse_slow_link
        for seg in segments:
            chain: list[str] = []
            for name in seg:
                std = float(stds.get(name, math.nan))
                dead_frac = float(dead.get(name, math.nan)) if dead is not None else math.nan
                usable = math.isfinite(std) and std > 0 and not dead_frac > t.dead_frac  # dead layers: dead_units
                if chain and usable and std < link * float(stds[chain[-1]]):
                    chain.append(name)
                    continue
                found = _collapsed(chain, stds, t, fast)
                if found is not None:
                    return found
                chain = [name] if usable else []
            found = _collapsed(chain, stds, t, fast)
            if found is not None:
                return found
    return None


def _collapsed(chain: list[str], stds: pd.Series, t: CollapseThresholds, fast: bool) -> tuple[list[str], float] | None:
    """``(chain, ratio per layer)`` when the chain is a fast or a slow collapse (see :func:`_collapse_at`)."""
    links = len(chain) - 1
    if links < (t.collapse_min_layers if fast else t.collapse_slow_links):
        return None
    first, last = float(stds[chain[0]]), float(stds[chain[-1]])
    per_layer = (last / first) ** (1.0 / links)
    if fast and per_layer <= t.collapse_ratio and last < t.collapse_std:
        return chain, per_layer
    if not fast and last / first <= t.collapse_slow_total:
        return chain, per_layer
    return None


@rule(
    "activation_collapse",
    requires=(Q.ACT_STD,),
    rank=210,
    thresholds=CollapseThresholds,
    summary="a chain of ≥ 3 links of activation layers (no norm/pool/attention/recurrent in between), each std < "
    "0.7x the previous, shrinking ≤ 0.35x per layer on average and ending below 0.05 (the lecture's 0.01·randn tanh "
    "table shrinks 0.22x per layer; PyTorch's default init at most 0.41x: silent); or a slow collapse: ≥ 6 links "
    "each < 0.8x the previous, shrinking ≥ 10x overall (Xavier init before ReLU: 0.71x per layer; Xavier-tanh "
    "0.78-0.95x and He-ReLU ~1x stay silent)",
)
def activation_collapse(view: RunView, t: CollapseThresholds) -> list[Diagnosis]:
    """Activation std shrinking geometrically with depth (the lecture's 0.01*randn tanh table).

    A chain of at least ``collapse_min_layers`` consecutive activation layers (no normalisation
    layer in between), each std below ``collapse_link`` times the previous one, shrinking by at
    most ``collapse_ratio`` per layer on (geometric) average and ending below ``collapse_std``.
    """
    m = view.matrix(Q.ACT_STD)
    segments = _collapse_segments(view)
    if m.empty or not segments:
        return []
    dead = view.matrix(Q.DEAD_FRAC)
    # Only the trailing run of collapsed steps matters (see sustained_since): walk back from the last
    # logging step and stop at the first step without a collapse, so a check does not grow with the run.
    found: dict[int, tuple[list[str], float]] = {}
    m = m.sort_index()
    for step in reversed(m.index):
        dead_row = dead.loc[step] if not dead.empty and step in dead.index else None
        hit = _collapse_at(m.loc[step], dead_row, segments, t)
        if hit is None:
            break
        found[int(step)] = hit
    if not found or len(found) < t.sustained_checks:
        return []
    start = min(found)
    last = int(m.index[-1])
    chain, per_layer = found[last]
    stds = m.loc[last]
    low = next((n for n in chain if float(stds[n]) < t.collapse_std), chain[-1])
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
