"""Architecture rules: BatchNorm with a small per-device batch.

Example:
    >>> import pandas as pd
    >>> from nndiag.rules.architecture import batchnorm_small_batch
    >>> from nndiag.rules.config import AdvisorConfig
    >>> from nndiag.rules.view import RunView
    >>> h = pd.DataFrame({"step": [0], "layer": [""], "stat": ["loss"], "value": [1.0]})
    >>> facts = {"has_batchnorm": True, "batch_size": 4, "forward_order": ["conv", "bn"],
    ...          "layers": {"conv": {"kind": "conv"}, "bn": {"kind": "norm", "is_batchnorm": True}}}
    >>> [(d.code, d.layer) for d in batchnorm_small_batch(RunView(h, facts), AdvisorConfig())]
    [('batchnorm_small_batch', 'bn')]
"""

from __future__ import annotations

from typing import Any

from nndiag.diagnosis import Diagnosis
from nndiag.rules.activations import first_step
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView


def _trained_batchnorms(view: RunView) -> list[str]:
    """BatchNorm layers, in forward order, that are not frozen (affine parameters trainable, or none)."""
    layers: dict[str, dict[str, Any]] = view.facts.get("layers") or {}
    params: dict[str, dict[str, Any]] = view.facts.get("params") or {}
    names = [n for n in view.ordered(list(layers)) if layers[n].get("is_batchnorm")]
    out = []
    for n in names:
        own = [p for p in params.values() if p.get("layer") == n]
        if own and not any(p.get("trainable", True) for p in own):
            continue  # frozen BatchNorm (fine-tuning a pretrained backbone): statistics are usually frozen too
        out.append(n)
    return out


@rule("batchnorm_small_batch", requires=())
def batchnorm_small_batch(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """BatchNorm trained with a per-device batch below ``cfg.bn_min_batch``: noisy batch statistics."""
    batch = view.facts.get("batch_size")
    if not view.facts.get("has_batchnorm") or not isinstance(batch, int) or isinstance(batch, bool):
        return []
    if batch <= 0 or batch >= cfg.bn_min_batch:
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
                f"below {cfg.bn_min_batch}."
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
