"""Building a run's :class:`~nndiag.facts.ModelFacts`: modules, parameters, optimizers, initial weights.

The recorder calls :func:`initial_weight_facts` when it attaches (before training) and
:func:`build_model_facts` after the first logging step (when the forward pass has revealed the
order of the modules, their output shapes and the batch size). The per-module classification
(kind, activation, fan-in) is :mod:`nndiag.collect.modules`; its names are re-exported here.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.collect.facts import build_model_facts, module_facts
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> modules = [(n, module_facts(m)) for n, m in model.named_children()]
    >>> f = build_model_facts(model, modules, ["0", "1"], {"0": [2, 4], "1": [2, 4]}, 2, [opt], {}, 0)
    >>> f.layers["0"].activation, f.params["0.weight"].shape, f.batch_size, f.optimizers[0]["class"]
    ('relu', [4, 3], 2, 'SGD')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nndiag.collect.distributed import local
from nndiag.collect.modules import (
    ATOMIC_TYPES,
    BATCHNORM_TYPES,
    CHANNELS_FIRST_KINDS,
    RELU_FAMILY,
    activation_name,
    clean_name,
    fan_in_out,
    float_tensors,
    is_channels_first,
    module_facts,
    module_kind,
    recorded_modules,
    saturation_bounds,
)
from nndiag.facts import InitFacts, LayerFacts, ModelFacts, ParamFacts

# the kinds whose layers are given the activation that follows them, and the kinds that end the search
_FED_KINDS = ("linear", "conv")
_STOP_KINDS = ("linear", "conv", "recurrent", "attention", "embedding")


def build_model_facts(
    model: nn.Module,
    modules: Sequence[tuple[str, dict[str, Any]]],
    forward_order: list[str],
    out_shapes: dict[str, list[int]],
    batch_size: int | None,
    optimizers: Sequence[Any],
    init: dict[str, InitFacts],
    start_step: int,
) -> ModelFacts:
    """The model facts of a run.

    Args:
        model: the root module.
        modules: ``(name, module_facts(module))`` of every recorded module.
        forward_order: recorded modules in the order the first logging step's forward called them.
        out_shapes: each called module's (first) output shape.
        batch_size: the batch size of that forward pass.
        optimizers: the run's optimizers (their parameter groups and hyperparameters).
        init: :func:`initial_weight_facts` of the model before training (``{}``: unknown).
        start_step: the step the run starts at (a resumed run's).
    """
    order = {name: i for i, name in enumerate(forward_order)}
    layers = {
        name: {**info, "forward_order": order.get(name), "out_shape": out_shapes.get(name)} for name, info in modules
    }
    link_activations(layers, forward_order)
    in_opt = {id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]}
    params = {}
    for raw, p in model.named_parameters():
        n = clean_name(raw)
        params[n] = ParamFacts(
            shape=list(p.shape),
            numel=p.numel(),
            trainable=p.requires_grad,
            in_optimizer=id(p) in in_opt,
            layer=n.rsplit(".", 1)[0] if "." in n else "",
        )
    typed = {name: LayerFacts.from_dict(info) for name, info in layers.items()}
    return ModelFacts(
        layers=typed,
        params=params,
        forward_order=list(forward_order),
        has_batchnorm=any(v.is_batchnorm for v in typed.values()),
        batch_size=batch_size,
        n_params=sum(p.numel() for p in model.parameters()),
        n_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        optimizers=[optimizer_facts(o) for o in optimizers],
        model_class=type(model).__name__,
        init=dict(init),
        resumed_at=start_step or None,
    )


def initial_weight_facts(model: nn.Module | None) -> dict[str, InitFacts]:
    """Per parameter, before training: mean, std, max |w|, and whether all units are identical.

    ``units_identical`` (tensors with >= 2 dims and >= 2 output units): every output unit's
    weights equal the first's, i.e. a symmetric (e.g. constant or all-zero) initialisation.
    One pass over the parameters with a single host transfer, once per run.

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(3, 4)
        >>> _ = nn.init.constant_(lin.weight, 0.5)
        >>> initial_weight_facts(lin)["weight"].units_identical
        True
    """
    if model is None:
        return {}
    names: list[str] = []
    rows: list[torch.Tensor] = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if nn.parameter.is_lazy(p) or p.numel() == 0 or not p.is_floating_point():
                continue  # lazy modules' parameters do not exist before the first forward pass
            w = local(p.detach()).float()  # FSDP: this rank's shard (no collective)
            if w.numel() == 0:
                continue
            flat = w.reshape(w.shape[0], -1) if w.dim() >= 2 else None
            if flat is not None and flat.shape[0] >= 2:
                identical = (flat - flat[:1]).abs().amax() == 0
            else:
                identical = w.new_zeros((), dtype=torch.bool)
            std = w.std(correction=0) if w.numel() > 1 else w.new_zeros(())
            rows.append(torch.stack([w.mean(), std, w.abs().amax(), identical.float()]))
            names.append(clean_name(name))
    if not rows:
        return {}
    values = torch.stack([r.to(rows[0].device) for r in rows]).tolist()
    return {
        n: InitFacts(mean=v[0], std=v[1], absmax=v[2], units_identical=bool(v[3]))
        for n, v in zip(names, values, strict=True)
    }


def link_activations(layers: dict[str, dict[str, Any]], order: list[str]) -> None:
    """Give each linear/conv layer the activation that follows it in forward order (in place)."""
    for i, name in enumerate(order):
        if layers.get(name, {}).get("kind") not in _FED_KINDS:
            continue
        follow = None
        for nxt in order[i + 1 :]:
            kind = layers.get(nxt, {}).get("kind")
            if kind == "activation":
                follow = layers[nxt]["activation"]
                break
            if kind in _STOP_KINDS:
                break
        layers[name]["activation"] = follow


def optimizer_facts(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer's class and per-group hyperparameters (JSON-safe values only) and parameter count."""
    groups = []
    for g in opt.param_groups:
        hp = {k: v for k, v in g.items() if k != "params" and isinstance(v, (int, float, bool, str, tuple))}
        hp["n_params"] = sum(p.numel() for p in g["params"])
        groups.append(hp)
    return {"class": type(opt).__name__, "param_groups": groups}


__all__ = [
    "ATOMIC_TYPES",
    "BATCHNORM_TYPES",
    "CHANNELS_FIRST_KINDS",
    "RELU_FAMILY",
    "activation_name",
    "build_model_facts",
    "clean_name",
    "fan_in_out",
    "float_tensors",
    "initial_weight_facts",
    "is_channels_first",
    "link_activations",
    "module_facts",
    "module_kind",
    "optimizer_facts",
    "recorded_modules",
    "saturation_bounds",
]
