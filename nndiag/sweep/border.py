"""Border check (is the best value on the edge of the searched range?) and the next stage's range.

Border rule (per numeric hyperparameter, over the finished trials, at least 5):
    take the best ``k = max(3, 10%)`` trials; a side (low or high) is flagged when the single best
    trial lies in that side's outer 15% of the range (in log space for log-scaled parameters), and
    so many of the top ``k`` lie there that uniform sampling would put them there with probability
    at most 2% (one-sided binomial test; for parameters with at most 10 distinct values, a grid,
    the chance level is the share of all trials at the values in that band instead of 15%). A
    parameter without effect (epsilon squared < 0.05, see :mod:`nndiag.sweep.importance`) is
    never flagged: its best values sit anywhere by chance.

Next range: the span of the top ``k`` values, padded by a quarter of that span (at least 5% of the
searched range) on each side, kept inside the searched range, except on a flagged side, which is
extended beyond the border by one decade (log) or half the range (linear; not below 0 when the
range started at 0 or above).

Example:
    >>> from nndiag.sweep.trials import Param
    >>> binom_tail(3, 3, 0.15) < 0.02 < binom_tail(2, 3, 0.15)
    True
    >>> lr = Param("lr", "float", 1e-5, 1e-1, log=True)
    >>> [f"{x:.0e}" for x in next_range(lr, [1e-5, 2e-5, 1.5e-5], "low")]
    ['1e-06', '3e-05']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nndiag.sweep.trials import Param

EDGE = 0.15  # the outer 15% of the range on each side is "the border"
ALPHA = 0.02  # flag when the top-k crowd the border with at most this chance probability
MIN_EFFECT = 0.05  # parameters with a smaller effect size are never flagged
MIN_TRIALS = 5
GRID_VALUES = 10  # at most this many distinct values: chance level from the trials, not from the range
PAD = 0.25  # next range: pad the top-k span by this fraction of it ...
MIN_PAD = 0.05  # ... and at least this fraction of the searched range


@dataclass(frozen=True)
class Border:
    """The border verdict of one hyperparameter.

    Attributes:
        side: ``"low"``, ``"high"`` or ``None`` (not on the border).
        in_band: how many of the top ``k`` lie in the flagged (or, unflagged, the fuller) band.
        k: how many best trials were looked at.
        p_value: chance probability of that many in the band.

    """

    side: str | None
    in_band: int
    k: int
    p_value: float


def binom_tail(m: int, k: int, p: float) -> float:
    """P(X >= m) for X ~ Binomial(k, p)."""
    return float(sum(math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(m, k + 1)))


def border(param: Param, top: list[float], all_values: list[float], effect: float) -> Border | None:
    """The border verdict from the top-k values (best first) and all sampled values; ``None`` if too few."""
    if len(all_values) < MIN_TRIALS or not top or not param.numeric:
        return None
    pos = [param.position(v) for v in top]
    distinct = set(all_values)
    best: Border | None = None
    for side, inside in (("low", lambda u: u <= EDGE), ("high", lambda u: u >= 1 - EDGE)):
        m = sum(1 for u in pos if inside(u))
        p0 = EDGE
        if len(distinct) <= GRID_VALUES:
            p0 = max(sum(1 for v in all_values if inside(param.position(v))) / len(all_values), 1e-9)
        p = binom_tail(m, len(pos), min(p0, 1.0))
        flagged = inside(pos[0]) and p <= ALPHA and effect >= MIN_EFFECT
        cand = Border(side if flagged else None, m, len(pos), p)
        if (
            best is None
            or (cand.side is not None and best.side is None)
            or (cand.side == best.side and p < best.p_value)
        ):
            best = cand
    return best


def next_range(param: Param, top: list[float], side: str | None) -> tuple[float, float]:
    """The suggested range for the next, finer stage (see the module docstring)."""
    t = [math.log10(v) if param.log else float(v) for v in top]
    lo_b, hi_b = (math.log10(param.low), math.log10(param.high)) if param.log else (param.low, param.high)
    a, b = min(t), max(t)
    pad = max(PAD * (b - a), MIN_PAD * (hi_b - lo_b))
    lo, hi = max(a - pad, lo_b), min(b + pad, hi_b)
    if side == "low":
        lo = lo_b - 1.0 if param.log else lo_b - 0.5 * (hi_b - lo_b)
        if not param.log and param.low >= 0:
            lo = max(lo, 0.0)
    elif side == "high":
        hi = hi_b + 1.0 if param.log else hi_b + 0.5 * (hi_b - lo_b)
    low, high = (10**lo, 10**hi) if param.log else (lo, hi)
    if param.kind == "int":
        low, high = float(math.floor(low)), float(math.ceil(high))
    return _round(low, "down"), _round(high, "up")


def _round(x: float, way: str) -> float:
    """``x`` to 2 significant digits, rounded outwards (so the range never shrinks by rounding)."""
    if x == 0 or not math.isfinite(x):
        return x
    e = math.floor(math.log10(abs(x))) - 1
    f = math.floor if way == "down" else math.ceil
    return float(f"{f(round(x / 10.0**e, 9))}e{e}")


def widen_hint(param: Param, side: str, suggested: tuple[float, float]) -> str:
    """A sentence saying which way to widen, e.g. ``widen the range below 1.00e-05 (try down to 1.00e-06)``."""
    from nndiag.sweep.trials import fmt

    edge: Any = param.low if side == "low" else param.high
    new = suggested[0] if side == "low" else suggested[1]
    if side == "low" and not param.log and param.low >= 0 and new >= param.low:
        return f"the best values sit at the lower end {fmt(edge)}, which cannot go lower"
    word = "below" if side == "low" else "above"
    return f"widen the range {word} {fmt(edge)} (try {'down' if side == 'low' else 'up'} to {fmt(new)})"
