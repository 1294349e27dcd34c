"""Helpers shared by the layer rules: sustained evidence, layer descriptions, and the thresholds they share.

Layer symptoms (collapse, saturation, dead units, ...) must hold at ``sustained_checks``
consecutive logging steps up to the end of the view; ``step`` is where that run began.

Example:
    >>> import pandas as pd
    >>> from nndiag.rules.layers import sustained_since
    >>> sustained_since(pd.Series([False, True, True, True], index=[0, 5, 10, 15]), 3)
    5
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nndiag import quantities as Q
from nndiag.rules.view import RunView

# Activations whose zero region passes no gradient at all (a unit whose input is always negative is dead).
HARD_ZERO_ACTIVATIONS = ("relu", "relu6")
# Activations that are not elementwise squashing functions of one unit (never part of a depth chain).
NON_ELEMENTWISE = ("softmax", "log_softmax")
# Layer kinds that renormalise, restart or rescale the signal: a depth chain of activation stds stops
# there (a global average pool alone divides the std by the spatial size).
CHAIN_BREAKERS = ("norm", "recurrent", "attention", "embedding", "pooling")
WEIGHT_KINDS = ("linear", "conv", "recurrent", "attention")


@dataclass(frozen=True)
class SustainedThresholds:
    """How long a layer symptom must hold before it is reported."""

    sustained_checks: int = 3  # a layer symptom must hold at this many consecutive logging steps (published: 3-5)


@dataclass(frozen=True)
class DeadFracThreshold:
    """When a ReLU layer counts as mostly dead (shared by the dead-unit and collapse rules)."""

    dead_frac: float = 0.5  # > 50% of a ReLU layer's units dead (cloud debugger)


@dataclass(frozen=True)
class InputScaleThresholds:
    """When the model input counts as unnormalised."""

    input_mean_abs: float = 1.0  # |input mean| above this (cloud debugger uses 0.2 for images)
    input_std_max: float = 10.0  # input std above this, or ...
    input_std_min: float = 0.01  # ... below this


def loss_falling(view: RunView, drop: float = 0.1, window: int = 50) -> bool:
    """Whether the training loss fell by at least ``drop`` (relative, median of first vs last third) lately.

    Over the last ``window`` steps or the last quarter of the run, whichever is longer; a layer
    symptom that comes with a loss still falling well is advice, not a warning.

    Example:
        >>> import pandas as pd
        >>> h = pd.DataFrame([(s, "", "loss", 2.0 * 0.98**s) for s in range(100)],
        ...                  columns=["step", "layer", "stat", "value"])
        >>> loss_falling(RunView(h))
        True
    """
    loss = view.series(Q.LOSS).dropna()
    loss = loss[loss.map(math.isfinite)]
    n = max(window, len(loss) // 4)
    if len(loss) < n:
        return False
    values = loss.to_numpy(dtype=float)[-n:]
    k = max(n // 3, 1)
    first, last = float(np.median(values[:k])), float(np.median(values[-k:]))
    return first > 0 and (first - last) / first >= drop


def harmed(view: RunView, dead: float = 0.5, saturated: float = 0.5) -> bool:
    """Signs of harm at the latest logging step: a ReLU layer mostly dead, or a layer mostly saturated."""
    for stat, limit in ((Q.DEAD_FRAC, dead), (Q.SAT_FRAC, saturated)):
        m = view.matrix(stat)
        if not m.empty and float(m.iloc[-1].max(skipna=True) if m.iloc[-1].notna().any() else 0.0) > limit:
            return True
    return False


def sustained_since(mask: pd.Series, checks: int) -> int | None:
    """First step of the trailing run of ``True`` in ``mask`` (indexed by step) if it spans >= ``checks`` steps.

    Example:
        >>> import pandas as pd
        >>> sustained_since(pd.Series([True, False, True, True, True], index=[0, 1, 2, 3, 4]), 3)
        2
        >>> sustained_since(pd.Series([True, True, False], index=[0, 1, 2]), 1) is None
        True
    """
    ordered = mask if mask.index.is_monotonic_increasing else mask.sort_index()
    return sustained_start(ordered.index.to_numpy(), ordered.to_numpy(dtype=bool), checks)


def sustained_start(steps: np.ndarray, mask: np.ndarray, checks: int) -> int | None:
    """:func:`sustained_since` of a mask given as arrays (``steps`` increasing).

    Example:
        >>> import numpy as np
        >>> sustained_start(np.array([0, 10, 20, 30]), np.array([False, True, True, True]), 3)
        10
    """
    false = np.flatnonzero(~mask)
    n = len(mask) - (int(false[-1]) + 1 if len(false) else 0)  # the trailing run of True
    if n == 0 or n < checks:
        return None
    return int(steps[len(mask) - n])


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


def input_unscaled(view: RunView, t: InputScaleThresholds) -> bool:
    """Whether the last recorded model input is far from zero mean / unit scale."""
    mean, std = view.series(Q.ACT_MEAN, Q.INPUT_LAYER), view.series(Q.ACT_STD, Q.INPUT_LAYER)
    if mean.empty or std.empty:
        return False
    mu, sd = abs(float(mean.iloc[-1])), float(std.iloc[-1])
    return mu > t.input_mean_abs or sd > t.input_std_max or sd < t.input_std_min
