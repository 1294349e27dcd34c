"""Loss-curve rules: non-finite, diverging, oscillating, flat loss; initial loss; over/underfitting.

Example:
    >>> import pandas as pd
    >>> from nndiag.rules.config import AdvisorConfig
    >>> from nndiag.rules.loss import nonfinite_loss
    >>> from nndiag.rules.view import RunView
    >>> losses = [2.3, 2.2, float("inf")]
    >>> h = pd.DataFrame({"step": [0, 1, 2], "layer": [""] * 3, "stat": ["loss"] * 3, "value": losses})
    >>> [(d.code, d.step, d.severity) for d in nonfinite_loss(RunView(h), AdvisorConfig())]
    [('nonfinite_loss', 2, 'error')]
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import pandas as pd

from nndiag.diagnosis import Diagnosis
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView, finite

T = TypeVar("T")
_MAD_DIFF = 0.6745 * math.sqrt(2.0)  # median |x_t - x_(t-1)| of Gaussian noise with std 1


@rule("nonfinite_loss", requires=("loss",))
def nonfinite_loss(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """NaN/Inf loss: name the first step and, where recorded, the first input/layer with NaN/Inf."""
    loss = view.series("loss")
    bad = loss[~loss.map(math.isfinite)]
    if bad.empty:
        return []
    first = int(bad.index[0])
    evidence: dict[str, float] = {"first_step": first, "nonfinite_steps": float(len(bad))}
    where = ""
    source = view.first_nonfinite(upto=first)
    if source is not None:
        layer, step = source
        evidence["first_nonfinite_layer_step"] = step
        where = f"; the first NaN/Inf appeared in {'the model input' if layer == 'input' else layer} at step {step}"
    last_good = loss[loss.map(math.isfinite)]
    if len(last_good):
        evidence["last_finite_loss"] = float(last_good.iloc[-1])
    return [
        Diagnosis(
            code="nonfinite_loss",
            severity="error",
            step=first,
            layer=None,
            message=f"The loss became {_kind(float(bad.iloc[0]))} at step {first}{where}.",
            evidence=evidence,
            suggestions=[
                "Lower the learning rate (by 10x) and add gradient clipping (e.g. gradient_clip_val=1.0).",
                "Check the data for NaN/Inf and the loss for log(0) or division by zero (add an epsilon).",
                "With fp16 mixed precision use a GradScaler, or train in bf16.",
            ],
        )
    ]


def _kind(value: float) -> str:
    return "NaN" if math.isnan(value) else "infinite"


# -- shared loss-curve analysis (also used by nndiag.rules.lr) -----------------------------------------

_CACHE: weakref.WeakKeyDictionary[RunView, dict[tuple[str, AdvisorConfig], Any]] = weakref.WeakKeyDictionary()


def _cached(view: RunView, name: str, cfg: AdvisorConfig, compute: Callable[[], T]) -> T:
    """Memoise one analysis per (view, config): several rules read the same curve at one check."""
    try:
        store = _CACHE.setdefault(view, {})
    except TypeError:  # a view that cannot be weakly referenced: no caching
        return compute()
    key = (name, cfg)
    if key not in store:
        store[key] = compute()
    return cast(T, store[key])


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
        chance: ln C for a softmax classifier whose step-0 loss is consistent with it (see
            :func:`softmax_classes`), else ``None``; its step-0 loss is then a reliable reference.
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


def loss_curve(view: RunView, cfg: AdvisorConfig) -> LossCurve | None:
    """The run's :class:`LossCurve`, or ``None`` with fewer than two finite losses."""
    return _cached(view, "curve", cfg, lambda: _loss_curve(view, cfg))


def _loss_curve(view: RunView, cfg: AdvisorConfig) -> LossCurve | None:
    loss = view.series("loss")
    values = loss.to_numpy(dtype=float)
    ok = np.isfinite(values)
    bad = loss.index[~ok]
    first_bad = int(bad[0]) if len(bad) else None
    if ok.sum() < 2:
        return None
    steps = loss.index.to_numpy()[ok].astype(int)
    values = values[ok]
    n = len(values)
    noise = _noise(values[-max(cfg.flat_window, int(cfg.flat_window_frac * n)) :])
    w = min(max(cfg.loss_smooth_steps, _median_samples(noise, cfg.loss_smooth_noise)), max(n, cfg.loss_smooth_steps))
    smooth = pd.Series(values).rolling(w, min_periods=(w + 1) // 2).median().to_numpy()
    start = float(np.median(values[: cfg.loss_start_steps]))
    converged = max(cfg.converged_loss, cfg.converged_frac * start)
    classes = softmax_classes(view, cfg, float(values[0])) if steps[0] == 0 else None
    chance = math.log(classes) if classes is not None else None
    return LossCurve(steps, values, noise, w, smooth, start, first_bad, converged, chance)


def _median_samples(noise: float, error: float) -> int:
    """Samples whose median has a relative standard error <= ``error`` under relative noise ``noise``.

    The standard error of a median of m samples is sqrt(pi / 2) * noise / sqrt(m). A non-positive
    loss (no relative scale) asks for infinitely many: callers then never decide.
    """
    if not math.isfinite(noise):
        return 2**62
    return math.ceil(math.pi / 2 * (noise / error) ** 2)


def _streak_start(mask: np.ndarray) -> int | None:
    """Index where the final run of ``True`` in ``mask`` begins, or ``None`` if the last entry is ``False``."""
    if len(mask) == 0 or not mask[-1]:
        return None
    false = np.flatnonzero(~mask)
    return int(false[-1]) + 1 if len(false) else 0


@dataclass(frozen=True)
class Divergence:
    """A loss climbing well above its running minimum (holding at the end of the view)."""

    onset: int  # first step of the climb above diverge_factor x minimum
    min_loss: float  # the (smoothed) running minimum it climbed from
    min_step: int
    loss: float  # the current (smoothed, or raw when exploding) loss
    factor: float  # loss / min_loss
    exploded: bool  # the raw loss passed loss_explode


def divergence(view: RunView, cfg: AdvisorConfig) -> Divergence | None:
    """The divergence holding at the end of the view, if any (see :func:`loss_diverging`)."""
    return _cached(view, "divergence", cfg, lambda: _divergence(view, cfg))


def _divergence(view: RunView, cfg: AdvisorConfig) -> Divergence | None:
    c = loss_curve(view, cfg)
    if c is None:
        return None
    s = c.smooth
    base = s.copy()
    if c.chance is not None:
        # A softmax classifier's step-0 loss (~ln C, checked) is a reliable minimum from the start, before
        # the smoothing window fills: a loss that jumps at step 1 and stays up is diverging too.
        base[0] = np.fmin(base[0], c.values[0])
    run_min = np.fmin.accumulate(base)  # NaN until the smoothing window is half full
    with np.errstate(invalid="ignore"):
        climbing = (run_min > 0) & (s >= cfg.diverge_factor * run_min) & (s > c.converged)
        raw_min = np.where(np.isnan(run_min), np.minimum.accumulate(c.values), run_min)
        high = np.maximum(cfg.loss_explode, cfg.diverge_factor * raw_min)
        exploding = (raw_min > 0) & (c.values >= high) & (c.values > c.converged)
    starts: list[tuple[int, bool]] = []
    i = _streak_start(climbing)
    if i is not None and len(s) - i >= cfg.diverge_min_steps:
        starts.append((i, False))
    j = _streak_start(exploding)
    if j is not None and len(s) - j >= cfg.explode_min_steps:
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
    """Large step-to-step swings of the loss without progress (holding at the end of the view)."""

    onset: int  # first step of the first window in which the swings held
    swing: float  # median |loss[t] - loss[t-1]| / median loss over the last window
    level: float  # median loss over the last window
    start: float  # the reference for progress: the loss's start level (or ln C, if lower, for a classifier)
    window: int


def oscillation(view: RunView, cfg: AdvisorConfig) -> Oscillation | None:
    """The oscillation holding at the end of the view, if any (see :func:`loss_oscillating`)."""
    return _cached(view, "oscillation", cfg, lambda: _oscillation(view, cfg))


def _oscillation(view: RunView, cfg: AdvisorConfig) -> Oscillation | None:
    c = loss_curve(view, cfg)
    if c is None or c.start <= 0:
        return None
    # The window medians must resolve oscillation_progress (each within half of it, one standard error),
    # or a slowly decreasing noisy loss would look stuck: a noisy loss needs long windows (no false alarm
    # on noisy small-batch runs, at the price of a late verdict on short ones).
    w = max(cfg.oscillation_window, _median_samples(c.noise, cfg.oscillation_progress / 2))
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
            & (swing >= cfg.oscillation_cv)
            & (lv >= cfg.oscillation_level_frac * ref)
            & (lv >= (1.0 - cfg.oscillation_progress) * level.shift(w).to_numpy())
        )
    i = _streak_start(holds)
    if i is None or len(holds) - i < cfg.oscillation_window:  # sustained, not a chance dip of the window medians
        return None
    onset = int(c.steps[max(i - w + 1, 0)])
    return Oscillation(onset, float(swing[-1]), float(lv[-1]), ref, w)


@dataclass(frozen=True)
class Plateau:
    """A loss that has not decreased over a window (holding at the end of the view)."""

    onset: int  # step from which the loss has stayed at its current level
    window: int  # recorded losses over which the drop was measured
    drop: float  # relative drop from the first to the last third of the window (negative: it rose)
    level: float  # median loss over the last third of the window
    noise: float  # estimated relative step-to-step noise of the loss


def plateau(view: RunView, cfg: AdvisorConfig) -> Plateau | None:
    """The plateau holding at the end of the view, if any (see :func:`loss_not_decreasing`)."""
    return _cached(view, "plateau", cfg, lambda: _plateau(view, cfg))


def _noise(values: np.ndarray) -> float:
    """Relative per-step noise: robust std of the step-to-step differences over the median (Gaussian MAD).

    ``inf`` when the median is not positive (no relative scale), 0 for fewer than two values.
    """
    if len(values) < 2:
        return 0.0
    level = float(np.median(values))
    if not level > 0:
        return math.inf
    return float(np.median(np.abs(np.diff(values)))) / (_MAD_DIFF * level)


def relative_drop(values: np.ndarray) -> float:
    """Relative drop from the median of the first third to the median of the last third (NaN if not positive)."""
    k = max(len(values) // 3, 1)
    first = float(np.median(values[:k]))
    return (first - float(np.median(values[-k:]))) / first if first > 0 else math.nan


def _plateau(view: RunView, cfg: AdvisorConfig) -> Plateau | None:
    c = loss_curve(view, cfg)
    if c is None:
        return None
    n = len(c.values)
    base = max(cfg.flat_window, int(cfg.flat_window_frac * n))
    if n < base:
        return None
    level = float(np.median(c.values[-base:]))
    noise = c.noise  # measured over the same last `base` losses
    if level <= c.converged or c.start <= 0 or not math.isfinite(noise):
        return None
    # The drop compares two medians of window/3 losses each: its standard error is noise * sqrt(3 pi / window).
    # Judge over a window long enough for that error to be below flat_rel_drop, or not at all.
    need = math.ceil(3 * math.pi * (noise / cfg.flat_rel_drop) ** 2)
    window = max(base, need)
    if window > n:
        return None
    win = c.values[-window:]
    drop = relative_drop(win)
    if not drop < cfg.flat_rel_drop:
        return None
    k = window // 3
    level = float(np.median(win[-k:]))
    se = noise * math.sqrt(math.pi / k)
    # Onset: just after the last time the smoothed loss stood clearly above today's level.
    with np.errstate(invalid="ignore"):
        above = np.flatnonzero(c.smooth > level * (1.0 + max(cfg.flat_rel_drop, 2 * se)))
    onset = min(int(above[-1]) + 1 if len(above) else 0, n - window)
    return Plateau(int(c.steps[onset]), window, drop, level, noise)


def softmax_classes(view: RunView, cfg: AdvisorConfig, loss0: float) -> int | None:
    """C when the run is (safely) a C-way softmax cross-entropy classifier, else ``None``.

    A user-set ``facts['num_classes']`` is trusted. A C inferred from the width of the last linear
    layer is trusted only when the step-0 loss is consistent with cross-entropy given the spread of
    those outputs: with labels independent of an untrained model's logits, the expected
    cross-entropy lies between ln C and ln C + std(logits) * sqrt(2 ln C) (the bound on the mean
    maximum of C Gaussians). A multi-output regression (MSE of small outputs against targets) falls
    outside that band almost always, and a loss far below ln C (pretrained model, or not
    cross-entropy) is never judged with an inferred C.
    """
    user = view.facts.get("num_classes")
    if isinstance(user, int) and not isinstance(user, bool) and user >= 2:
        return user
    classes = view.num_classes()
    if classes is None or not view.forward_order:
        return None
    std = finite(view.series("act_std", view.forward_order[-1]))
    if std.empty:
        return None
    ln_c = math.log(classes)
    low = ln_c * (1.0 - cfg.initial_loss_tolerance)
    high = ln_c + cfg.initial_loss_ce_margin * float(std.iloc[0]) * math.sqrt(2.0 * ln_c)
    return classes if low <= loss0 <= high else None


# -- rules ------------------------------------------------------------------------------------


def _g(x: float) -> str:
    """A number in 3 significant digits."""
    return f"{x:.3g}"


@rule("loss_diverging", requires=("loss",))
def loss_diverging(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Loss climbing to >= ``diverge_factor`` x its running minimum (smoothed, sustained), or exploding.

    The loss is smoothed by a trailing rolling median (small-batch noise), must have left the
    converged region, and must stay up for ``diverge_min_steps`` losses (``explode_min_steps`` for
    a raw loss above ``loss_explode``), so that single spikes and short warmup bumps are ignored.
    """
    d = divergence(view, cfg)
    if d is None:
        return []
    span = view.last_step - d.min_step
    how = "exploded" if d.exploded else "is diverging"
    return [
        Diagnosis(
            code="loss_diverging",
            severity="error",
            step=d.onset,
            layer=None,
            message=(
                f"The loss {how}: it rose from its minimum {_g(d.min_loss)} at step {d.min_step} to "
                f"{_g(d.loss)} ({_g(d.factor)}x) over {span} steps."
            ),
            evidence={
                "min_loss": d.min_loss,
                "min_step": float(d.min_step),
                "loss": d.loss,
                "factor": d.factor,
                "exploded": float(d.exploded),
            },
            suggestions=[
                "Lower the learning rate 3-10x; if the loss diverged after a while, add a decay schedule.",
                "Add gradient clipping (e.g. clip_grad_norm_ max_norm=1.0) and a learning-rate warmup.",
                "Check the data for corrupt or mislabelled batches around the step where it began.",
            ],
        )
    ]


@rule("loss_oscillating", requires=("loss",))
def loss_oscillating(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Large step-to-step swings (median |diff| / median >= ``oscillation_cv``) with no progress.

    No progress: over the last ``oscillation_window`` steps the loss is still above
    ``oscillation_level_frac`` of its start level and not ``oscillation_progress`` lower than in
    the window before; a loss near zero (converged) is never called oscillating, since its
    relative per-batch swings are large in healthy runs.
    """
    o = oscillation(view, cfg)
    if o is None:
        return []
    return [
        Diagnosis(
            code="loss_oscillating",
            severity="warning",
            step=o.onset,
            layer=None,
            message=(
                f"The loss swings by {o.swing:.0%} from step to step without progress: over the last "
                f"{o.window} steps it stayed around {_g(o.level)} ({o.level / o.start:.0%} of its start level "
                f"{_g(o.start)})."
            ),
            evidence={"swing": o.swing, "level": o.level, "start_loss": o.start, "window": float(o.window)},
            suggestions=[
                "Lower the learning rate 3-10x (or add momentum/Adam, which damp zig-zagging).",
                "Increase the batch size if it is small: per-batch losses of tiny batches are noisy.",
                "Check the data pipeline: shuffled labels or inconsistent preprocessing make the loss jump.",
            ],
        )
    ]


@rule("loss_not_decreasing", requires=("loss",))
def loss_not_decreasing(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Loss dropped by less than ``flat_rel_drop`` over the last window, and is not near zero.

    The window is at least ``flat_window`` steps, ``flat_window_frac`` of the run in long runs, and
    long enough for the noise of the drop estimate to be below ``flat_rel_drop``. Not reported when
    the loss is diverging or oscillating (the more specific rules speak) or resting near zero.
    """
    p = plateau(view, cfg)
    if p is None or divergence(view, cfg) is not None or oscillation(view, cfg) is not None:
        return []
    c = loss_curve(view, cfg)
    start = c.start if c is not None else p.level
    change = f"fell only {p.drop:.1%}" if p.drop >= 0 else f"rose {-p.drop:.1%}"
    return [
        Diagnosis(
            code="loss_not_decreasing",
            severity="warning",
            step=p.onset,
            layer=None,
            message=(
                f"The loss has stopped decreasing at {_g(p.level)} ({p.level / start:.0%} of its start {_g(start)}): "
                f"it {change} over the last {p.window} steps."
            ),
            evidence={
                "loss": p.level,
                "start_loss": start,
                "relative_drop": p.drop,
                "window": float(p.window),
                "noise": p.noise,
            },
            suggestions=[
                "Run a learning-rate range test: a flat loss from the start usually means the rate is far off.",
                "Check that the model can overfit a tiny subset (~20 samples); if not, look for a bug in the "
                "data/labels, the loss, or parameters missing from the optimizer.",
                "If this is a late plateau, decay the learning rate (e.g. ReduceLROnPlateau) or add capacity.",
            ],
        )
    ]


@rule("initial_loss_off", requires=("loss",))
def initial_loss_off(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Step-0 loss of a C-way softmax classifier off ln C by more than ``initial_loss_tolerance`` (relative).

    Only for classifiers known to be softmax cross-entropy (see :func:`softmax_classes`): never for
    one output, and for an inferred C only when the loss is consistent with cross-entropy. A loss
    below ln C is reported only for a user-declared ``num_classes`` (pretrained models start low).
    """
    loss = view.series("loss")
    if loss.empty or not math.isfinite(float(loss.iloc[0])):
        return []
    step0, loss0 = int(loss.index[0]), float(loss.iloc[0])
    if step0 > 0:
        return []  # the run's start was not recorded (resumed without its earlier history): no initial loss
    classes = softmax_classes(view, cfg, loss0)
    if classes is None:
        return []
    ln_c = math.log(classes)
    off = (loss0 - ln_c) / ln_c
    if abs(off) <= cfg.initial_loss_tolerance:
        return []
    if off > 0:
        message = (
            f"The initial loss {_g(loss0)} is {loss0 / ln_c:.1f}x the ln({classes}) = {ln_c:.3g} expected for "
            f"{classes}-way softmax cross-entropy at initialisation: the initial predictions are overconfident."
        )
        suggestions = [
            "Scale down the initialisation of the output layer (e.g. multiply its weights by 0.01, zero its bias).",
            "Use PyTorch's default or Xavier/He initialisation instead of a large custom one.",
            "Pass raw logits to CrossEntropyLoss (no softmax/log-softmax before it), and check num_classes.",
        ]
    else:
        message = (
            f"The initial loss {_g(loss0)} is far below the ln({classes}) = {ln_c:.3g} expected for an untrained "
            f"{classes}-way softmax classifier."
        )
        suggestions = [
            "If the model is pretrained this is expected; otherwise check for labels leaking into the inputs.",
            "Check num_classes and that the loss is the mean cross-entropy over the batch (not a sum or a subset).",
        ]
    return [
        Diagnosis(
            code="initial_loss_off",
            severity="warning",
            step=step0,
            layer=None,
            message=message,
            evidence={"initial_loss": loss0, "expected_loss": ln_c, "num_classes": float(classes), "rel_off": off},
            suggestions=suggestions,
        )
    ]


@dataclass(frozen=True)
class _ValPoint:
    step: int
    val: float
    train: float  # median training loss over the `span` steps up to this validation


def _val_points(view: RunView, cfg: AdvisorConfig) -> tuple[list[_ValPoint], float]:
    """Validation losses with the training loss of the same period, and that training loss's relative error.

    The training loss at a validation step is the median over the steps since the previous
    validation, or over the smoothing window if longer (noisy small-batch losses need it).
    """
    c = loss_curve(view, cfg)
    val = finite(view.series("val_loss"))
    if c is None or val.empty:
        return [], math.inf
    vsteps = val.index.to_numpy().astype(int)
    interval = int(np.median(np.diff(vsteps))) if len(vsteps) > 1 else int(vsteps[0]) + 1
    span = max(interval, c.smooth_window)
    points: list[_ValPoint] = []
    for step, v in zip(vsteps, val.to_numpy(dtype=float), strict=True):
        sel = c.values[(c.steps > step - span) & (c.steps <= step)]
        if len(sel):
            points.append(_ValPoint(int(step), float(v), float(np.median(sel))))
    return points, math.sqrt(math.pi / 2) * c.noise / math.sqrt(span)


@rule("overfitting", requires=("loss", "val_loss"))
def overfitting(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Validation loss stalled or rising while the training loss keeps falling.

    Validation losses are compared as medians over ``k = overfit_patience`` consecutive checks
    (they are noisy too). Holds when the best check, inside the best such window, is at least k
    checks old; the training loss (median over the same windows) fell since then by
    ``overfit_train_drop`` and by more than its noise (two standard errors of a difference of two
    medians); the validation loss has not converged; and either the last window is
    ``overfit_val_rise`` above the best one, or the relative gap (val - train) / train exceeded
    ``overfit_gap`` at each of the last k checks. A converged run with a constant generalisation
    gap is silent.
    """
    points, error = _val_points(view, cfg)
    k = cfg.overfit_patience
    c = loss_curve(view, cfg)
    if c is None or len(points) < k + 1:
        return []
    vals = np.array([p.val for p in points])
    trains = np.array([p.train for p in points])
    if not (trains > 0).all():
        return []
    # Validation losses are noisy too: compare medians over k consecutive validation checks.
    windows = np.array([np.median(vals[i : i + k]) for i in range(len(points) - k + 1)])
    j = int(np.argmin(windows))  # the best window: checks j .. j+k-1
    best_i = j + int(np.argmin(vals[j : j + k]))  # the best check, in it
    if len(points) - 1 - best_i < k:  # patience: k checks since the best one without a better window
        return []
    best_val, recent = float(windows[j]), float(windows[-1])
    best = points[best_i]
    last = points[-1]
    if recent <= c.converged:
        return []
    # Training level over the best window vs the last k checks, with its noise (two standard errors
    # of a difference of two medians), so that a converged run does not look like it still fits.
    before, after = float(np.median(trains[j : j + k])), float(np.median(trains[-k:]))
    drop = 1.0 - after / before
    if drop < max(cfg.overfit_train_drop, 2 * math.sqrt(2) * error):
        return []
    gaps = [float(g) for g in (vals[-k:] - trains[-k:]) / trains[-k:]]
    rising = recent >= (1.0 + cfg.overfit_val_rise) * best_val
    if not rising and min(gaps) <= cfg.overfit_gap:
        return []
    onset = points[best_i + 1].step
    if rising:
        message = (
            f"Overfitting: the validation loss rose from {_g(best_val)} around step {best.step} to {_g(recent)} "
            f"while the training loss fell from {_g(before)} to {_g(after)}."
        )
    else:
        message = (
            f"Overfitting: the validation loss {_g(last.val)} is {gaps[-1]:.0%} above the training loss "
            f"{_g(last.train)} and has not improved for {len(points) - 1 - best_i} validation checks "
            f"while the training loss kept falling."
        )
    return [
        Diagnosis(
            code="overfitting",
            severity="warning",
            step=onset,
            layer=None,
            message=message,
            evidence={
                "val_loss": recent,
                "best_val_loss": best_val,
                "best_val_step": float(best.step),
                "train_loss": after,
                "train_loss_at_best": before,
                "gap": gaps[-1],
            },
            suggestions=[
                "Get more training data or add data augmentation.",
                "Add regularisation: weight decay (e.g. 1e-4 to 5e-4) and dropout (~0.5 on hidden units).",
                f"Use early stopping: keep the checkpoint of step {best.step}, where the validation loss was best.",
                "Reduce the model's capacity if the gap stays large.",
            ],
        )
    ]


@rule("underfitting", requires=("loss", "val_loss"))
def underfitting(view: RunView, cfg: AdvisorConfig) -> list[Diagnosis]:
    """Training loss flat and high (>= ``underfit_loss_frac`` of ln C, or of its start) with no train/val gap."""
    p = plateau(view, cfg)
    c = loss_curve(view, cfg)
    points, _ = _val_points(view, cfg)
    if p is None or c is None or not points or divergence(view, cfg) is not None:
        return []
    if oscillation(view, cfg) is not None:
        return []
    ref = c.chance if c.chance is not None else c.start
    if ref <= 0 or p.level < cfg.underfit_loss_frac * ref:
        return []
    last = points[-1]
    gap = (last.val - p.level) / p.level
    if gap > cfg.overfit_gap:
        return []
    ref_text = f"the chance level {ref:.3g}" if c.chance is not None else f"its start {_g(ref)}"
    return [
        Diagnosis(
            code="underfitting",
            severity="info",
            step=p.onset,
            layer=None,
            message=(
                f"Underfitting: the training loss has stalled at {_g(p.level)} ({p.level / ref:.0%} of {ref_text}) "
                f"and the validation loss {_g(last.val)} is no higher, so the model fits the training data poorly."
            ),
            evidence={"train_loss": p.level, "val_loss": last.val, "reference_loss": ref, "gap": gap},
            suggestions=[
                "Add capacity: wider or deeper layers (then check the gap again).",
                "Train longer, or with a better-tuned learning rate (run a range test).",
                "Lower the regularisation (weight decay, dropout) if any.",
            ],
        )
    ]
