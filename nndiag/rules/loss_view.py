"""The loss-curve analysis of one run's view, computed once per check and shared by the loss rules.

:mod:`nndiag.rules.curves` holds the pure analysis; this module feeds it a run's losses, adds
what needs the model (is this a softmax classifier, and with how many classes?), and memoises
each analysis per (view, thresholds) since several rules read the same curve at one check.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.loss_view import loss_curve
    >>> h = pd.DataFrame({"step": [0, 1, 2], "layer": [""] * 3, "stat": ["loss"] * 3, "value": [2.0, 1.5, 1.0]})
    >>> c = loss_curve(RunView(h), AdvisorConfig())
    >>> c.start, c.values.tolist()
    (1.5, [2.0, 1.5, 1.0])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from nndiag import quantities as Q
from nndiag.rules import curves
from nndiag.rules.curves import Divergence, LossCurve, Oscillation, Plateau
from nndiag.rules.view import RunView, finite

T = TypeVar("T")


@dataclass(frozen=True)
class ChanceThresholds:
    """When a run is trusted to be a C-way softmax cross-entropy classifier (see :func:`softmax_classes`)."""

    initial_loss_tolerance: float = 0.5  # |loss0 - ln C| / ln C above this
    initial_loss_ce_margin: float = 1.5  # cross-entropy is at most ln C + std(logits) * sqrt(2 ln C) (bound on the
    # mean max of C Gaussians) at step 0; a larger loss with an inferred C is not cross-entropy (regression): silent


@dataclass(frozen=True)
class LossThresholds(curves.DivergenceParams, curves.OscillationParams, curves.PlateauParams, ChanceThresholds):
    """Every number of the loss-curve analysis (the base of the loss rules' thresholds)."""


_KEY_FIELDS = tuple(f.name for f in fields(LossThresholds))


def _cached(view: RunView, name: str, t: Any, compute: Callable[[], T]) -> T:
    """Memoise one analysis per (view, loss thresholds): several rules read the same curve at one check."""
    return view.derived(("loss_view", name, tuple(getattr(t, f) for f in _KEY_FIELDS)), compute)


def loss_curve(view: RunView, t: LossThresholds) -> LossCurve | None:
    """The run's :class:`~nndiag.rules.curves.LossCurve`, or ``None`` with fewer than two finite losses."""
    return _cached(view, "curve", t, lambda: _loss_curve(view, t))


def _loss_curve(view: RunView, t: LossThresholds) -> LossCurve | None:
    loss = view.series(Q.LOSS)
    steps, values, _ = curves.finite_losses(loss.index.to_numpy(), loss.to_numpy(dtype=float))
    chance = None
    if len(values) >= 2 and steps[0] == 0:
        classes = softmax_classes(view, t, float(values[0]))
        chance = math.log(classes) if classes is not None else None
    return curves.smooth_curve(loss.index.to_numpy(), loss.to_numpy(dtype=float), t, chance)


def divergence(view: RunView, t: LossThresholds) -> Divergence | None:
    """The divergence holding at the end of the view, if any (see :func:`nndiag.rules.curves.divergence`)."""

    def compute() -> Divergence | None:
        c = loss_curve(view, t)
        return curves.divergence(c, t) if c is not None else None

    return _cached(view, "divergence", t, compute)


def oscillation(view: RunView, t: LossThresholds) -> Oscillation | None:
    """The oscillation holding at the end of the view, if any (see :func:`nndiag.rules.curves.oscillation`)."""

    def compute() -> Oscillation | None:
        c = loss_curve(view, t)
        return curves.oscillation(c, t) if c is not None else None

    return _cached(view, "oscillation", t, compute)


def plateau(view: RunView, t: LossThresholds) -> Plateau | None:
    """The plateau holding at the end of the view, if any (see :func:`nndiag.rules.curves.plateau`)."""

    def compute() -> Plateau | None:
        c = loss_curve(view, t)
        return curves.plateau(c, t) if c is not None else None

    return _cached(view, "plateau", t, compute)


def softmax_classes(view: RunView, t: ChanceThresholds, loss0: float) -> int | None:
    """C when the run is (safely) a C-way softmax cross-entropy classifier, else ``None``.

    A user-set ``num_classes`` is trusted. A C inferred from the width of the last linear layer is
    trusted only when the step-0 loss is consistent with cross-entropy given the spread of those
    outputs: with labels independent of an untrained model's logits, the expected cross-entropy
    lies between ln C and ln C + std(logits) * sqrt(2 ln C) (the bound on the mean maximum of C
    Gaussians). A multi-output regression (MSE of small outputs against targets) falls outside
    that band almost always, and a loss far below ln C (pretrained model, or not cross-entropy) is
    never judged with an inferred C.
    """
    user = view.facts.num_classes
    if isinstance(user, int) and not isinstance(user, bool) and user >= 2:
        return user
    classes = view.num_classes()
    if classes is None or not view.forward_order:
        return None
    std = finite(view.series(Q.ACT_STD, view.forward_order[-1]))
    if std.empty:
        return None
    ln_c = math.log(classes)
    low = ln_c * (1.0 - t.initial_loss_tolerance)
    high = ln_c + t.initial_loss_ce_margin * float(std.iloc[0]) * math.sqrt(2.0 * ln_c)
    return classes if low <= loss0 <= high else None


def g(x: float) -> str:
    """A number in 3 significant digits (the loss rules' messages).

    Example:
        >>> g(0.000123456), g(2283.4)
        ('0.000123', '2.28e+03')
    """
    return f"{x:.3g}"
