"""What a module is, without running it: kind, activation family, fan-in; which modules nndiag records.

These are the per-module parts of the model facts (:mod:`nndiag.collect.facts` assembles them
into :class:`~nndiag.facts.ModelFacts`): what a layer is, which activation it is, how wide its input is.

Example:
    >>> import torch.nn as nn
    >>> from nndiag.collect.modules import module_facts
    >>> f = module_facts(nn.Linear(784, 100))
    >>> f["kind"], f["fan_in"], f["fan_out"]
    ('linear', 784, 100)
    >>> module_facts(nn.Tanh())["activation"]
    'tanh'

"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# Modules recorded as one unit even though they have children whose forward is never
# called on its own (MultiheadAttention computes out_proj functionally).
ATOMIC_TYPES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)

RELU_FAMILY = ("relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu", "mish")

_ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "prelu",
    nn.RReLU: "rrelu",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.CELU: "celu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Mish: "mish",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.Hardtanh: "hardtanh",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Hardswish: "hardswish",
    nn.Softsign: "softsign",
    nn.Softplus: "softplus",
    nn.Softmax: "softmax",
    nn.LogSoftmax: "log_softmax",
    nn.Tanhshrink: "tanhshrink",
    nn.LogSigmoid: "log_sigmoid",
}

_KINDS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.Linear, nn.Bilinear), "linear"),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "conv"),
    (
        (
            nn.BatchNorm1d,
            nn.BatchNorm2d,
            nn.BatchNorm3d,
            nn.SyncBatchNorm,
            nn.LayerNorm,
            nn.GroupNorm,
            nn.InstanceNorm1d,
            nn.InstanceNorm2d,
            nn.InstanceNorm3d,
            nn.LocalResponseNorm,
            nn.RMSNorm,
        ),
        "norm",
    ),
    ((nn.RNNBase, nn.RNNCellBase), "recurrent"),
    ((nn.MultiheadAttention,), "attention"),
    ((nn.Embedding, nn.EmbeddingBag), "embedding"),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout), "dropout"),
    (
        (
            nn.MaxPool1d,
            nn.MaxPool2d,
            nn.MaxPool3d,
            nn.AvgPool1d,
            nn.AvgPool2d,
            nn.AvgPool3d,
            nn.AdaptiveAvgPool1d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d,
            nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d,
        ),
        "pooling",
    ),
)

# Layers whose outputs are channels-first (unit = dim 1) whatever their rank.
CHANNELS_FIRST_KINDS = ("conv", "pooling")
_CHANNELS_FIRST_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


# Class-name fragments of activation modules from other libraries (e.g. Hugging Face's
# GELUActivation, NewGELUActivation, QuickGELUActivation), most specific first.
_NAME_HINTS = (
    ("leakyrelu", "leaky_relu"),
    ("relu6", "relu6"),
    ("relu", "relu"),
    ("gelu", "gelu"),
    ("silu", "silu"),
    ("swish", "silu"),
    ("mish", "mish"),
    ("elu", "elu"),
    ("tanh", "tanh"),
    ("sigmoid", "sigmoid"),
)


def activation_name(module: nn.Module) -> str | None:
    """Activation family of an activation module (``"relu"``, ``"tanh"``, ...), else ``None``.

    Besides ``torch.nn`` activations, parameter-free modules of other libraries are recognised
    by class name (``GELUActivation`` -> ``"gelu"``).

    Example:
        >>> import torch.nn as nn
        >>> class NewGELUActivation(nn.Module): ...
        >>> class ParallelUnit(nn.Module): ...
        >>> activation_name(NewGELUActivation()), activation_name(ParallelUnit()), activation_name(nn.Linear(2, 2))
        ('gelu', None, None)
    """
    for cls in type(module).__mro__:
        if cls in _ACTIVATIONS:
            return _ACTIVATIONS[cls]
    if type(module).__module__.startswith("torch.") or next(module.parameters(recurse=False), None) is not None:
        return None
    name = type(module).__name__.lower().removesuffix("activation").removesuffix("module")
    for hint, family in _NAME_HINTS:
        if name.endswith(hint):
            return family
    return None


def module_kind(module: nn.Module) -> str:
    """One of linear, conv, norm, activation, recurrent, attention, embedding, dropout, pooling, other."""
    if activation_name(module) is not None:
        return "activation"
    for types, kind in _KINDS:
        if isinstance(module, types):
            return kind
    return "other"


def saturation_bounds(module: nn.Module) -> tuple[float | None, float | None] | None:
    """Bounds of the non-saturated region for saturating activations, else ``None``.

    Hardtanh-style modules saturate at their clip values (``y <= min_val`` or ``y >= max_val``).
    """
    from nndiag.stats.activations import SATURATION_RULES

    act = activation_name(module)
    if act in SATURATION_RULES:
        return SATURATION_RULES[act]
    if isinstance(module, nn.Hardtanh):  # also ReLU6
        low = None if isinstance(module, nn.ReLU6) else float(module.min_val)
        return (low, float(module.max_val))
    if act == "hardsigmoid":
        return (0.0, 1.0)
    return None


def is_channels_first(module: nn.Module) -> bool:
    """Whether the module's output has its units (channels) in dim 1 for every rank."""
    return module_kind(module) in CHANNELS_FIRST_KINDS or isinstance(module, _CHANNELS_FIRST_NORMS)


def fan_in_out(module: nn.Module) -> tuple[int | None, int | None]:
    """Fan-in and fan-out of a weight layer, as used by Xavier/He initialisation."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Bilinear):
        return module.in1_features + module.in2_features, module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        receptive = math.prod(module.kernel_size)
        groups = module.groups
        if module.transposed:
            return module.out_channels // groups * receptive, module.in_channels // groups * receptive
        return module.in_channels // groups * receptive, module.out_channels // groups * receptive
    if isinstance(module, nn.RNNBase):
        return module.input_size, module.hidden_size
    if isinstance(module, nn.RNNCellBase):
        return module.input_size, module.hidden_size
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, module.embed_dim
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return None, module.embedding_dim
    return None, None


def module_facts(module: nn.Module) -> dict[str, Any]:
    """Facts about one module that do not depend on running it."""
    fan_in, fan_out = fan_in_out(module)
    return {
        "module_type": type(module).__name__,
        "kind": module_kind(module),
        "activation": activation_name(module),
        "fan_in": fan_in,
        "fan_out": fan_out,
        "is_batchnorm": isinstance(module, BATCHNORM_TYPES),
        "n_params": sum(p.numel() for p in module.parameters(recurse=False)),
    }


def clean_name(name: str) -> str:
    """A module or parameter name without ``torch.compile``'s ``_orig_mod`` wrapper level.

    Example:
        >>> clean_name("net._orig_mod.fc1.weight"), clean_name("_orig_mod.0")
        ('net.fc1.weight', '0')
    """
    return name.replace("._orig_mod.", ".").removeprefix("_orig_mod.").removesuffix("._orig_mod")


def recorded_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules nndiag hooks: leaves, plus atomic containers (whose children are then skipped).

    The root itself is included when it is a leaf (a bare ``nn.Linear`` model).
    """
    out: list[tuple[str, nn.Module]] = []
    skip_prefixes: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        if isinstance(mod, ATOMIC_TYPES):
            out.append((clean_name(name) or type(mod).__name__, mod))
            skip_prefixes.append(name + "." if name else "")
            continue
        if next(mod.children(), None) is None:
            out.append((clean_name(name) or type(mod).__name__, mod))
    return out


def float_tensors(obj: Any, depth: int = 0) -> list[torch.Tensor]:
    """All floating-point tensors in a (nested) output: tensor, tuple, list, dict, dataclass, PackedSequence."""
    if depth > 4 or obj is None:
        return []
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, nn.utils.rnn.PackedSequence):
        return float_tensors(obj.data, depth + 1)
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in float_tensors(v, depth + 1)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in float_tensors(v, depth + 1)]
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields is not None:
        return [t for name in fields for t in float_tensors(getattr(obj, name, None), depth + 1)]
    return []
