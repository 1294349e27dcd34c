"""Architecture rules: BatchNorm with a small per-device batch; sigmoid as a hidden-layer activation.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.architecture import batchnorm_small_batch
    >>> h = pd.DataFrame({"step": [0], "layer": [""], "stat": ["loss"], "value": [1.0]})
    >>> facts = {"has_batchnorm": True, "batch_size": 4, "forward_order": ["conv", "bn"],
    ...          "layers": {"conv": {"kind": "conv"}, "bn": {"kind": "norm", "is_batchnorm": True}}}
    >>> [(d.code, d.layer) for d in batchnorm_small_batch(RunView(h, facts), AdvisorConfig())]
    [('batchnorm_small_batch', 'bn')]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nndiag.diagnosis import Diagnosis
from nndiag.rules.layers import describe, first_step
from nndiag.rules.registry import NoThresholds, rule
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class BatchNormThresholds:
    """When a BatchNorm layer's batch is too small."""

    bn_min_batch: int = 8  # BatchNorm with a per-device batch below this


def _trained_batchnorms(view: RunView) -> list[str]:
    """BatchNorm layers, in forward order, that are not frozen (affine parameters trainable, or none)."""
    layers = view.facts.layers
    params = view.facts.params
    names = [n for n in view.ordered(list(layers)) if layers[n].get("is_batchnorm")]
    out = []
    for n in names:
        own = [p for p in params.values() if p.get("layer") == n]
        if own and not any(p.get("trainable", True) for p in own):
            continue  # frozen BatchNorm (fine-tuning a pretrained backbone): statistics are usually frozen too
        out.append(n)
    return out


@rule(
    "batchnorm_small_batch",
    rank=170,
    thresholds=BatchNormThresholds,
    summary="a BatchNorm layer with trainable parameters and a per-device batch < 8",
)
def batchnorm_small_batch(view: RunView, t: BatchNormThresholds) -> list[Diagnosis]:
    """BatchNorm trained with a per-device batch below ``t.bn_min_batch``: noisy batch statistics."""
    batch = view.facts.batch_size
    if not view.facts.has_batchnorm or not isinstance(batch, int) or isinstance(batch, bool):
        return []
    if batch <= 0 or batch >= t.bn_min_batch:
        return []
    bns = _trained_batchnorms(view)
    if not bns:
        return []
    more = f" ({len(bns)} BatchNorm layers)" if len(bns) > 1 else ""
    return [
        Diagnosis(
            code="batchnorm_small_batch",
            severity="warning",
            step=first_step(view),
            layer=bns[0],
            message=(
                f"{bns[0]} normalises over a per-device batch of {batch}{more}: its batch statistics are too noisy "
                f"below {t.bn_min_batch}."
            ),
            evidence={"batch_size": float(batch), "batchnorm_layers": float(len(bns))},
            suggestions=[
                "Replace BatchNorm with GroupNorm (e.g. nn.GroupNorm(32, C)) or LayerNorm: they do not depend on "
                "the batch size.",
                "Increase the per-device batch size (gradient accumulation does not help BatchNorm).",
                "When fine-tuning a pretrained model, freeze the BatchNorm statistics (module.eval()) or use "
                "SyncBatchNorm across devices.",
            ],
        )
    ]


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


@rule(
    "sigmoid_hidden_layer",
    severity="info",
    rank=180,
    summary="a Sigmoid module whose output feeds further linear/conv layers (not output layers, RNN gates, or "
    "gate/attention/excitation modules)",
)
def sigmoid_hidden_layer(view: RunView, t: NoThresholds) -> list[Diagnosis]:
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
