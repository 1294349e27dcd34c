"""Loss-curve analysis: pure functions over arrays of steps and losses (no run, no view, no I/O).

The loss rules (``nndiag.rules.loss``, ``fit``, ``lr``) *detect* with these functions and then
*describe* what they found. Each analysis takes a small frozen parameter dataclass; the rules'
threshold dataclasses derive from them, so one set of numbers drives both.

Example:
    >>> import numpy as np
    >>> from nndiag.rules.curves import DivergenceParams, divergence, smooth_curve
    >>> steps = np.arange(60)
    >>> losses = np.r_[np.linspace(2.0, 1.0, 30), np.linspace(1.0, 8.0, 30)]
    >>> c = smooth_curve(steps, losses, DivergenceParams())
    >>> d = divergence(c, DivergenceParams())
    >>> d.onset, round(d.factor, 1)
    (40, 6.2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

_MAD_DIFF = 0.6745 * math.sqrt(2.0)  # median |x_t - x_(t-1)| of Gaussian noise with std 1


@dataclass(frozen=True)
class CurveParams:
    """How a loss curve is smoothed and when it counts as converged."""

    loss_smooth_steps: int = 10  # loss curves are judged on a trailing rolling median over this many steps
    # (batch-to-batch noise of small batches; nndiag's calibration runs at batch 2-32) ...
    loss_smooth_noise: float = 0.1  # ... or more steps, until the smoothed loss's relative error is below this
    # (lognormal per-batch noise of std 0.6, seen at batch 2-4, then needs ~57 steps)
    loss_start_steps: int = 5  # the start level of the loss is the median of its first this many values
    converged_loss: float = 1e-3  # a loss resting below this has converged, not stalled (published practice)
    converged_frac: float = 0.05  # ... as has one resting below 5% of its start level (relative form, so that
    # per-batch spikes of a loss near zero, whose relative swings exceed 100% in healthy runs, are ignored)
    flat_window: int = 50  # optimizer steps over which a flat loss is judged, at least (cloud debugger: 10 checks)
    flat_window_frac: float = 0.25  # ... growing to this fraction of the run, so that the slow late progress of
    # long runs is not taken for a plateau


@dataclass(frozen=True)
class DivergenceParams(CurveParams):
    """When a loss counts as diverging or exploded."""

    diverge_factor: float = 2.0  # smoothed loss >= 2x its running minimum (cloud debugger: "loss >= 2x min")
    diverge_min_steps: int = 5  # ... sustained over this many consecutive recorded losses
    loss_explode: float = 1e3  # a raw loss above this (and 2x the minimum) counts as exploded (published 1e3)
    explode_min_steps: int = 2  # ... at this many consecutive recorded losses (one spike is not an explosion)


@dataclass(frozen=True)
class OscillationParams(CurveParams):
    """When step-to-step swings of the loss count as oscillation without progress."""

    oscillation_cv: float = 0.5  # median step-to-step |diff| / median loss above this = large swings (a healthy
    # batch-32 run swings ~0.02-0.2 above 5% of its start level; batch 4: up to ~0.6 but while still decreasing)
    oscillation_window: int = 30  # ... over this many steps, or more for a noisy loss: as many as it takes for the
    # window medians to resolve oscillation_progress (lognormal noise 0.3: 57 steps; 0.6: 227 steps); all of
    # this held for this many consecutive steps
    oscillation_level_frac: float = 0.5  # no progress: the loss is still above half its start level ...
    oscillation_progress: float = 0.1  # ... and is not 10% lower than in the window before


@dataclass(frozen=True)
class PlateauParams(CurveParams):
    """When a loss counts as not decreasing."""

    flat_rel_drop: float = 0.01  # < 1% relative drop over the window = not decreasing (cloud debugger: 0.1% per
    # check over 10 checks); the window also grows until the noise of the drop estimate is below this
    flat_significance: float = 4.0  # ... unless the drop, however small, is this many standard errors above zero
    # and consistent (each third below the one before): a smooth full-batch loss still falling slowly is progress


@dataclass(frozen=True)
class LossCurve:
    """The finite training losses of a run, smoothed, with their start level.

    Attributes:
        steps: optimizer steps of the finite losses.
        values: the finite losses.
        noise: relative step-to-step noise of the recent losses (robust std of the ratio to their median).
        smooth_window: steps of the smoothing median: ``loss_smooth_steps``, more for a noisy loss so
            that the smoothed curve's relative error stays below ``loss_smooth_noise``.
        smooth: trailing rolling median over ``smooth_window`` (NaN until half a window is filled).
        start: median of the first ``loss_start_steps`` finite losses.
        first_nonfinite: first step with a NaN/Inf loss, or ``None``.
        converged: a level at or below which the loss counts as converged (not stalled, not oscillating).
        chance: ln C for a softmax classifier whose step-0 loss is consistent with it, else ``None``;
            its step-0 loss is then a reliable reference.
    """

    steps: np.ndarray
    values: np.ndarray
    noise: float
    smooth_window: int
    smooth: np.ndarray
    start: float
    first_nonfinite: int | None
    converged: float
    chance: float | None


def finite_losses(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int | None]:
    """``(steps, values)`` of the finite losses, and the first step whose loss is NaN/Inf (or ``None``)."""
    values = np.asarray(values, dtype=float)
    steps = np.asarray(steps)
    ok = np.isfinite(values)
    bad = steps[~ok]
    return steps[ok].astype(int), values[ok], (int(bad[0]) if len(bad) else None)


def smooth_curve(
    steps: np.ndarray, values: np.ndarray, params: CurveParams, chance: float | None = None
) -> LossCurve | None:
    """The :class:`LossCurve` of losses ``values`` at ``steps``, or ``None`` with fewer than two finite losses.

    ``chance`` is ln C when the run is known to be a C-way softmax classifier that started at step 0.
    """
    steps, values, first_bad = finite_losses(steps, values)
    if len(values) < 2:
        return None
    n = len(values)
    noise = relative_noise(values[-max(params.flat_window, int(params.flat_window_frac * n)) :])
    need = median_samples(noise, params.loss_smooth_noise)
    w = min(max(params.loss_smooth_steps, need), max(n, params.loss_smooth_steps))
    smooth = pd.Series(values).rolling(w, min_periods=(w + 1) // 2).median().to_numpy()
    start = float(np.median(values[: params.loss_start_steps]))
    converged = max(params.converged_loss, params.converged_frac * start)
    return LossCurve(steps, values, noise, w, smooth, start, first_bad, converged, chance)


def median_samples(noise: float, error: float) -> int:
    """Samples whose median has a relative standard error <= ``error`` under relative noise ``noise``.

    The standard error of a median of m samples is sqrt(pi / 2) * noise / sqrt(m). A non-positive
    loss (no relative scale) asks for infinitely many: callers then never decide.

    Example:
        >>> median_samples(0.6, 0.1)
        57
    """
    if not math.isfinite(noise):
        return 2**62
    return math.ceil(math.pi / 2 * (noise / error) ** 2)


def streak_start(mask: np.ndarray) -> int | None:
    """Index where the final run of ``True`` in ``mask`` begins, or ``None`` if the last entry is ``False``.

    Example:
        >>> streak_start(np.array([True, False, True, True])), streak_start(np.array([True, False]))
        (2, None)
    """
    if len(mask) == 0 or not mask[-1]:
        return None
    false = np.flatnonzero(~mask)
    return int(false[-1]) + 1 if len(false) else 0


def relative_noise(values: np.ndarray) -> float:
    """Relative per-step noise: robust std of the step-to-step differences over the median (Gaussian MAD).

    ``inf`` when the median is not positive (no relative scale), 0 for fewer than two values.

    Example:
        >>> relative_noise(np.array([1.0, 1.0, 1.0])), relative_noise(np.array([-1.0, 1.0]))
        (0.0, inf)
    """
    if len(values) < 2:
        return 0.0
    level = float(np.median(values))
    if not level > 0:
        return math.inf
    return float(np.median(np.abs(np.diff(values)))) / (_MAD_DIFF * level)


def relative_drop(values: np.ndarray) -> float:
    """Relative drop from the median of the first third to the median of the last third (NaN if not positive).

    Example:
        >>> relative_drop(np.array([4.0, 3.0, 2.0, 1.0, 1.0, 1.0]))
        0.7142857142857143
    """
    k = max(len(values) // 3, 1)
    first = float(np.median(values[:k]))
    return (first - float(np.median(values[-k:]))) / first if first > 0 else math.nan


@dataclass(frozen=True)
class Divergence:
    """A loss climbing well above its running minimum (holding at the end of the curve)."""

    onset: int  # first step of the climb above diverge_factor x minimum
    min_loss: float  # the (smoothed) running minimum it climbed from
    min_step: int
    loss: float  # the current (smoothed, or raw when exploding) loss
    factor: float  # loss / min_loss
    exploded: bool  # the raw loss passed loss_explode


def divergence(c: LossCurve, params: DivergenceParams) -> Divergence | None:
    """The divergence holding at the end of the curve, if any.

    The loss is smoothed (small-batch noise), must have left the converged region and stay up for
    ``diverge_min_steps`` losses (``explode_min_steps`` for a raw loss above ``loss_explode``).
    """
    s = c.smooth
    base = s.copy()
    if c.chance is not None:
        # A softmax classifier's step-0 loss (~ln C, checked) is a reliable minimum from the start, before
        # the smoothing window fills: a loss that jumps at step 1 and stays up is diverging too.
        base[0] = np.fmin(base[0], c.values[0])
    run_min = np.fmin.accumulate(base)  # NaN until the smoothing window is half full
    with np.errstate(invalid="ignore"):
        climbing = (run_min > 0) & (s >= params.diverge_factor * run_min) & (s > c.converged)
        raw_min = np.where(np.isnan(run_min), np.minimum.accumulate(c.values), run_min)
        high = np.maximum(params.loss_explode, params.diverge_factor * raw_min)
        exploding = (raw_min > 0) & (c.values >= high) & (c.values > c.converged)
    starts: list[tuple[int, bool]] = []
    i = streak_start(climbing)
    if i is not None and len(s) - i >= params.diverge_min_steps:
        starts.append((i, False))
    j = streak_start(exploding)
    if j is not None and len(s) - j >= params.explode_min_steps:
        starts.append((j, True))
    if not starts:
        return None
    onset, _ = min(starts)
    exploded = any(e for _, e in starts)
    ref = run_min[onset] if np.isfinite(run_min[onset]) else raw_min[onset]
    before = np.where(np.isfinite(base[: onset + 1]), base[: onset + 1], c.values[: onset + 1])
    k = int(np.argmin(before))
    now = float(c.values[-1]) if exploded else float(s[-1])
    return Divergence(int(c.steps[onset]), float(ref), int(c.steps[k]), now, now / float(ref), exploded)


@dataclass(frozen=True)
class Oscillation:
    """Large step-to-step swings of the loss without progress (holding at the end of the curve)."""

    onset: int  # first step of the first window in which the swings held
    swing: float  # median |loss[t] - loss[t-1]| / median loss over the last window
    level: float  # median loss over the last window
    start: float  # the reference for progress: the loss's start level (or ln C, if lower, for a classifier)
    window: int


def oscillation(c: LossCurve, params: OscillationParams) -> Oscillation | None:
    """The oscillation holding at the end of the curve, if any.

    The window medians must resolve ``oscillation_progress`` (each within half of it, one standard
    error), or a slowly decreasing noisy loss would look stuck: a noisy loss needs long windows (no
    false alarm on noisy small-batch runs, at the price of a late verdict on short ones).
    """
    if c.start <= 0:
        return None
    w = max(params.oscillation_window, median_samples(c.noise, params.oscillation_progress / 2))
    if len(c.values) < 2 * w:
        return None
    v = pd.Series(c.values)
    level = v.rolling(w).median()
    swing = (v.diff().abs().rolling(w - 1).median() / level).to_numpy()
    lv = level.to_numpy()
    ref = min(c.start, c.chance) if c.chance is not None else c.start
    with np.errstate(invalid="ignore"):
        holds = (
            (lv > c.converged)
            & (swing >= params.oscillation_cv)
            & (lv >= params.oscillation_level_frac * ref)
            & (lv >= (1.0 - params.oscillation_progress) * level.shift(w).to_numpy())
        )
    i = streak_start(holds)
    if i is None or len(holds) - i < params.oscillation_window:  # sustained, not a chance dip of the medians
        return None
    onset = int(c.steps[max(i - w + 1, 0)])
    return Oscillation(onset, float(swing[-1]), float(lv[-1]), ref, w)


@dataclass(frozen=True)
class Plateau:
    """A loss that has not decreased over a window (holding at the end of the curve)."""

    onset: int  # step from which the loss has stayed at its current level
    window: int  # recorded losses over which the drop was measured
    drop: float  # relative drop from the first to the last third of the window (negative: it rose)
    level: float  # median loss over the last third of the window
    noise: float  # estimated relative step-to-step noise of the loss


def plateau(c: LossCurve, params: PlateauParams) -> Plateau | None:
    """The plateau holding at the end of the curve, if any.

    The window is at least ``flat_window`` steps, ``flat_window_frac`` of the run in long runs, and
    long enough for the noise of the drop estimate to be below ``flat_rel_drop``.
    """
    n = len(c.values)
    base = max(params.flat_window, int(params.flat_window_frac * n))
    if n < base:
        return None
    level = float(np.median(c.values[-base:]))
    noise = c.noise  # measured over the same last `base` losses
    if level <= c.converged or c.start <= 0 or not math.isfinite(noise):
        return None
    # The drop compares two medians of window/3 losses each: its standard error is noise * sqrt(3 pi / window).
    # Judge over a window long enough for that error to be below flat_rel_drop, or not at all.
    need = math.ceil(3 * math.pi * (noise / params.flat_rel_drop) ** 2)
    window = max(base, need)
    if window > n:
        return None
    win = c.values[-window:]
    drop = relative_drop(win)
    if not drop < params.flat_rel_drop:
        return None
    k = window // 3
    thirds = [float(np.median(win[i * k : (i + 1) * k])) for i in range(3)]
    se_drop = noise * math.sqrt(3 * math.pi / window)
    if drop > params.flat_significance * se_drop and thirds[0] > thirds[1] > thirds[2]:
        return None  # small but certain, steady progress
    level = float(np.median(win[-k:]))
    se = noise * math.sqrt(math.pi / k)
    # Onset: just after the last time the smoothed loss stood clearly above today's level.
    with np.errstate(invalid="ignore"):
        above = np.flatnonzero(c.smooth > level * (1.0 + max(params.flat_rel_drop, 2 * se)))
    onset = min(int(above[-1]) + 1 if len(above) else 0, n - window)
    return Plateau(int(c.steps[onset]), window, drop, level, noise)
