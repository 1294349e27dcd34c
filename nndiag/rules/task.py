"""Task-level rules (issue 15): baseline loss, strong regularisation, short runs, creeping loss.

A loss at the trivial baseline, regularisation that wins, a run that stopped too early, and a
learning rate so low that the loss only creeps.

DRAFT, not registered: plain functions ``(RunView, TaskRuleThresholds) -> list[Diagnosis]`` to be
adapted to the ``@rule`` registry (:data:`PROPOSED` lists the metadata for each). They read the task
facts through :func:`nndiag.rules.task_view.task_of` (``facts["task"]``: loss kind, targets,
``baseline_loss``) and the recorded ``loss``, ``update_ratio``, ``weight_norm``, ``grad_norm``,
``lr`` and ``output_spread``. Every rule stays quiet when what it needs is unknown.

* :func:`loss_at_baseline`: the training loss sits at what the best constant prediction gives
  (the class prior, the target mean) for a long stretch. It names the likely cause from the
  evidence: huge first updates -> ``lr_too_high`` (a collapse to a constant prediction); healthy
  updates -> labels that do not match their inputs. It defers to the faults that explain a loss at
  the baseline (a broadcast shape, unscaled targets, strong regularisation, a tiny learning rate).
* :func:`regularization_too_strong`: weight decay (or a penalty term in the loss graph) strong enough
  that the weights shrink steadily while the training loss stays high.
* :func:`undertrained`: at the end of the run (``facts["final_step"]`` or ``facts["total_steps"]``
  reached) the loss was still falling fast, significantly above its noise.
* :func:`lr_too_low_creeping`: the broader ``lr_too_low``: updates ~3e-4 of the weights or less while
  the loss creeps down and is still far from fitted (the flat-loss form is in :mod:`nndiag.rules.lr`).

Example:
    >>> import pandas as pd
    >>> from nndiag.rules.task import TaskRuleThresholds, loss_at_baseline
    >>> from nndiag.rules.view import RunView
    >>> rows = [(s, "", "loss", 0.69 + 0.01 * (s % 3)) for s in range(300)]
    >>> rows += [(s, "fc.weight", "update_ratio", 1e-3) for s in range(0, 300, 10)]
    >>> facts = {"params": {"fc.weight": {"shape": [1, 8]}},
    ...          "task": {"loss": {"kind": "bce_with_logits"}, "baseline_loss": 0.693}}
    >>> view = RunView(pd.DataFrame(rows, columns=["step", "layer", "stat", "value"]), facts)
    >>> [(d.code, d.severity) for d in loss_at_baseline(view, TaskRuleThresholds())]
    [('loss_at_baseline', 'warning')]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nndiag.diagnosis import Diagnosis
from nndiag.rules.lr import ratio_checks, weight_matrices
from nndiag.rules.task_view import OUTPUT_RANGES, REGRESSION_LOSSES, TaskView, task_of
from nndiag.rules.view import RunView

__all__ = [
    "PROPOSED",
    "TaskRuleThresholds",
    "loss_at_baseline",
    "lr_too_low_creeping",
    "regularization_too_strong",
    "undertrained",
]


@dataclass(frozen=True)
class TaskRuleThresholds:
    """The numbers of the task rules (one attribute each; comments give the reason)."""

    # -- loss at the baseline ----------------------------------------------------------------
    baseline_min_steps: int = 150  # judged only after this many steps (slow starts sit at ln C for a while)
    baseline_window: int = 100  # over the last this many steps at least ...
    baseline_window_frac: float = 0.3  # ... or this fraction of the run, whichever is longer
    baseline_low: float = 0.9  # the loss is "at the baseline" between 0.9x ...
    baseline_high: float = 1.15  # ... and 1.15x what the best constant prediction gives
    baseline_progress: float = 0.05  # ... and fell by less than 5% of the baseline over the window
    early_ratio_huge: float = 0.1  # first updates this large (median update/weight) = the lr blew the net away
    early_checks: int = 3  # ... judged over the first this many logging steps
    # -- target scale (deferral only; the target rule itself is in targets.py) ---------------
    target_scale_large: float = 10.0  # regression targets with |mean| or std above this explain a baseline loss
    # -- regularisation ----------------------------------------------------------------------
    coupled_decay_strong: float = 0.05  # L2 weight decay (SGD, Adam, RMSprop: added to the gradient) from 0.05 up
    # (typical 1e-4..5e-4; 1e-2 is already unusual)
    decoupled_decay_strong: float = 5e-4  # AdamW-style decay: lr x weight_decay per step from 5e-4 up (the weights
    # lose >= 5% every 100 steps; AdamW defaults give 1e-5, large-model practice ~1e-4)
    reg_shrink: float = 0.6  # the total weight-matrix norm fell below 60% of its initial value ...
    reg_loss_frac: float = 0.8  # ... while the loss stays above 80% of the baseline (or of its start level)
    reg_min_steps: int = 50  # judged after this many steps
    # -- undertrained ------------------------------------------------------------------------
    undertrained_window: int = 30  # the end of the run: the last this many steps at least ...
    undertrained_window_frac: float = 0.2  # ... or this fraction of the run
    undertrained_drop: float = 0.15  # the loss fell by this fraction over that window (fitted trend) ...
    undertrained_drop_ref: float = 0.15  # ... and by this fraction of the baseline (or of its start level): a loss
    # already far below the baseline that keeps halving slowly is refining, not stopped early
    undertrained_t: float = 4.0  # ... with a trend this many standard errors from zero
    converged_frac: float = 0.05  # a loss below 5% of the baseline (or of its start) has converged enough
    converged_loss: float = 1e-3  # ... as has one below this
    # -- learning rate too low (creeping loss) ------------------------------------------------
    creep_ratio: float = 3e-4  # even the largest update/weight ratio over the weight matrices at most this (3x under
    # the healthy ~1e-3; healthy converged SGD runs seen at >= 1.2e-3; Adam at 1e-5 gives ~7e-5, SGD at 1e-4 ~2e-4).
    # The largest, not the median: when only some layers update slowly the gradient flow is the cause ...
    creep_checks: int = 3  # ... at this many consecutive logging steps ...
    creep_min_steps: int = 50  # ... after this many steps ...
    creep_loss_frac: float = 0.7  # ... with the loss still above 70% of the baseline (or of its start level)
    creep_grad_ratio: float = 1e-4  # not when ||g||/||w|| is this small (the gradients vanish: another fault)
    lr_decay_factor: float = 10.0  # not after a scheduler cut the lr 10x from its peak (tiny updates by design)


# Proposed registry metadata (for ``@rule``): code -> keyword arguments.
PROPOSED: dict[str, dict[str, Any]] = {
    "loss_at_baseline": {
        "requires": ("loss", "update_ratio"),
        "severity": ("warning", "error"),  # error: the lr_too_high form
        "rank": 140,
        "explained_by": (
            "loss_mismatch",
            "target_not_normalized",
            "regularization_too_strong",
            "lr_too_low",
            "weights_not_updating",
            "output_activation_mismatch",
        ),
        "summary": "the training loss stays within 0.9-1.15x the best constant prediction's loss (class prior, "
        "target mean) over the last 100 steps / 30% of the run after step 150; first updates >= 0.1 of the "
        "weights name lr_too_high (collapse), else labels that do not match the inputs",
    },
    "regularization_too_strong": {
        "requires": ("loss", "weight_norm"),
        "severity": "warning",
        "rank": 145,
        "summary": "weight decay >= 0.05 (coupled L2) or lr x decay >= 5e-4 (AdamW), or a penalty term in the loss "
        "graph, with the weight-matrix norm below 60% of its start and the loss above 80% of the baseline",
    },
    "undertrained": {
        "requires": ("loss",),
        "severity": "warning",
        "rank": 175,
        "explained_by": ("lr_too_low",),
        "summary": "at the run's last step the loss fell >= 15% over the last 30 steps / 20% of the run (fitted "
        "log-linear trend, >= 4 standard errors), by >= 15% of the baseline, and has not converged",
    },
    "lr_too_low": {
        "requires": ("loss", "update_ratio"),
        "severity": "warning",
        "rank": 160,
        "summary": "(creeping form) even the largest weight-matrix update/weight ratio <= 3e-4 at 3 logging steps "
        "after step 50 while the loss is still above 70% of the baseline; silent when gradients vanish or a "
        "scheduler cut the lr",
    },
}


# -- shared readings ----------------------------------------------------------------------------


def _loss(view: RunView) -> pd.Series:
    s = view.series("loss")
    return s[np.isfinite(s.to_numpy(dtype=float))]


def _raw_task(view: RunView) -> dict[str, Any]:
    extra = getattr(view.facts, "extra", None)
    raw = extra.get("task") if isinstance(extra, dict) else None
    return raw if isinstance(raw, dict) else {}


def _fact(view: RunView, key: str) -> Any:
    extra = getattr(view.facts, "extra", None)
    return extra.get(key) if isinstance(extra, dict) else None


def _reference(t: TaskView, loss: pd.Series) -> tuple[float, str] | None:
    """The level a loss is compared with: the baseline if known, else the start level of the loss."""
    if t.baseline is not None and t.baseline > 0:
        return t.baseline, "baseline"
    if len(loss) >= 5:
        start = float(loss.iloc[:5].median())
        return (start, "start") if start > 0 else None
    return None


def _baseline_phrase(t: TaskView) -> str:
    if t.loss_kind in ("cross_entropy", "nll"):
        return "predicting the class prior for every sample"
    if t.loss_kind in ("bce", "bce_with_logits"):
        return "predicting the positive rate for every sample"
    if t.loss_kind == "l1":
        return "predicting the targets' median for every sample"
    return "predicting the targets' mean for every sample"


def _target_scale(t: TaskView) -> float | None:
    mean, std = t.target.get("mean"), t.target.get("std")
    if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)):
        return None
    return max(abs(float(mean)), float(std))


# loss-graph notes of an output activation the loss applies again (output_activation_mismatch names them)
_MISUSE_NOTES = frozenset(
    {
        "softmax_before_cross_entropy",
        "sigmoid_before_cross_entropy",
        "sigmoid_before_bce_with_logits",
        "nll_without_log",
    }
)


def _output_cannot_fit(t: TaskView) -> bool:
    """A bounded output activation (sigmoid, tanh, ReLU, ...) whose range misses the regression targets."""
    bounds = OUTPUT_RANGES.get(t.final_activation or "")
    rng = t.target_range
    if bounds is None or rng is None or t.loss_kind not in (*REGRESSION_LOSSES, "unknown"):
        return False
    lo, hi = bounds
    margin = 0.05 * (hi - lo) if math.isfinite(hi) else 0.05 * (rng[1] - rng[0])
    return rng[0] < lo - margin or rng[1] > hi + margin


def _broadcast(view: RunView, t: TaskView) -> bool:
    """Whether the loss graph shows an ``[N, 1]`` against ``[N]`` broadcast (the output shape alone does not)."""
    if t.broadcast_from is not None:
        return True
    reduced = (_raw_task(view).get("loss") or {}).get("reduced_shape")
    if not reduced or not t.output_shape or t.loss_kind not in ("mse", "l1"):
        return False
    return math.prod(int(x) for x in reduced) > math.prod(t.output_shape)


def _creeping(view: RunView, th: TaskRuleThresholds) -> bool:
    """Whether even the largest weight-matrix update ratio stayed at most ``creep_ratio`` lately."""
    ratios = ratio_checks(view, "max")
    k = th.creep_checks
    return len(ratios) >= k and float(ratios.iloc[-k:].max()) <= th.creep_ratio


def _early_ratio(view: RunView, th: TaskRuleThresholds) -> float | None:
    ratios = ratio_checks(view)
    if len(ratios) < th.early_checks:
        return None
    return float(ratios.iloc[: th.early_checks].median())


def _decay(view: RunView) -> tuple[float, str] | None:
    """The strongest weight decay over the optimizer groups: ``(strength, description)``.

    The strength is the coefficient for coupled L2 decay, and lr x decay per step for decoupled.
    """
    best: tuple[float, str] | None = None
    for opt in view.facts.optimizers or []:
        cls = str(opt.get("class", ""))
        decoupled = cls.lower().startswith("adamw") or "decoupled_weight_decay" in str(opt)
        for g in opt.get("param_groups") or []:
            wd = g.get("weight_decay")
            if not isinstance(wd, (int, float)) or not wd > 0:
                continue
            if decoupled or g.get("decoupled_weight_decay"):
                lr = g.get("lr")
                if not isinstance(lr, (int, float)):
                    continue
                item = (float(lr) * float(wd), f"{cls}(weight_decay={wd:g}) at lr {lr:g}: decoupled")
            else:
                item = (float(wd), f"{cls}(weight_decay={wd:g}): L2 added to the gradient")
            if best is None or item[0] > best[0]:
                best = item
    return best


def _strong_regularization(view: RunView, th: TaskRuleThresholds) -> tuple[str, dict[str, float]] | None:
    """What regularises strongly (a phrase and evidence), or ``None``."""
    d = _decay(view)
    if d is not None:
        strength, text = d
        limit = th.decoupled_decay_strong if "decoupled" in text else th.coupled_decay_strong
        if strength >= limit:
            return f"weight decay {text}", {"weight_decay_strength": strength}
    loss_facts = _raw_task(view).get("loss") or {}
    if loss_facts.get("extra_terms"):
        return "a penalty term added to the loss", {}
    return None


def _weight_shrink(view: RunView) -> tuple[float, int] | None:
    """(last / first total weight-matrix norm, first step), or ``None``."""
    m = view.matrix("weight_norm")
    if m.empty:
        return None
    cols = weight_matrices(view, [str(c) for c in m.columns])
    if not cols:
        return None
    total = np.sqrt((m[cols] ** 2).sum(axis=1, min_count=1)).dropna()
    total = total[total > 0]
    if len(total) < 3:
        return None
    return float(total.iloc[-1] / total.iloc[0]), int(total.index[0])


def _lr_cut(view: RunView, th: TaskRuleThresholds) -> bool:
    m = view.matrix("lr")
    if m.empty:
        return False
    top = m.max(axis=1, skipna=True).dropna()
    top = top[top > 0]
    return bool(len(top)) and float(top.iloc[-1]) * th.lr_decay_factor <= float(top.max())


def _grad_weight(view: RunView, steps: list[int]) -> float | None:
    g, w = view.matrix("grad_norm"), view.matrix("weight_norm")
    if g.empty or w.empty:
        return None
    cols = [c for c in weight_matrices(view, [str(c) for c in g.columns]) if c in w.columns]
    rows = [s for s in steps if s in g.index and s in w.index]
    if not cols or not rows:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (g.loc[rows, cols] / w.loc[rows, cols]).to_numpy(dtype=float)
    r = r[np.isfinite(r)]
    return float(np.median(r)) if r.size else None


# -- loss_at_baseline ---------------------------------------------------------------------------


def loss_at_baseline(view: RunView, th: TaskRuleThresholds) -> list[Diagnosis]:
    """The loss sits at the best constant prediction's loss: the model learns nothing from its inputs."""
    t = task_of(view)
    base = t.baseline
    loss = _loss(view)
    if base is None or not base > 0 or view.last_step < th.baseline_min_steps or len(loss) < 20:
        return []
    span = max(th.baseline_window, int(th.baseline_window_frac * (view.last_step + 1)))
    win = loss[loss.index > view.last_step - span]
    if len(win) < 10:
        return []
    level = float(win.median())
    if not th.baseline_low * base <= level <= th.baseline_high * base:
        return []
    third = max(len(win) // 3, 1)
    progress = (float(win.iloc[:third].median()) - float(win.iloc[-third:].median())) / base
    if progress > th.baseline_progress:
        return []
    # faults that explain a loss at the baseline are named by their own rules
    if _broadcast(view, t) or t.note in _MISUSE_NOTES or _output_cannot_fit(t):
        return []
    ratios = ratio_checks(view)
    early = _early_ratio(view, th)
    onset = int(win.index[0])
    evidence: dict[str, float] = {"loss": level, "baseline_loss": base, "loss_to_baseline": level / base}
    spread = view.series("output_spread")
    spread = spread[np.isfinite(spread.to_numpy(dtype=float))]
    if len(spread):
        evidence["output_spread"] = float(spread.iloc[-1])
    what = _baseline_phrase(t)
    if early is not None and early >= th.early_ratio_huge:
        evidence["early_update_ratio"] = early
        return [
            Diagnosis(
                code="lr_too_high",
                severity="error",
                step=int(ratios.index[0]),
                layer=None,
                message=(
                    f"Learning rate too high: the first updates changed the weights by {early:.2g} of their size "
                    f"(healthy ~1e-3) and the network collapsed to a constant prediction: the loss sits at "
                    f"{level:.4g}, what {what} gives ({base:.4g})."
                ),
                evidence=evidence,
                suggestions=[
                    "Lower the learning rate 10-100x (Adam: start at 1e-3; SGD: 0.01-0.1).",
                    "Add a learning-rate warmup over the first few hundred steps.",
                    "Clip gradients (clip_grad_norm_ with max_norm=1.0).",
                ],
            )
        ]
    scale = _target_scale(t)
    if t.loss_kind in REGRESSION_LOSSES and scale is not None and scale >= th.target_scale_large:
        return []
    if _strong_regularization(view, th) is not None:
        return []
    if _creeping(view, th):
        return []  # lr_too_low (or frozen weights) explains it
    if len(ratios):
        evidence["update_ratio"] = float(ratios.iloc[-th.creep_checks :].median())
    return [
        Diagnosis(
            code="loss_at_baseline",
            severity="warning",
            step=onset,
            layer=None,
            message=(
                f"The training loss sits at {level:.4g}, what {what} gives ({base:.4g}), since step {onset} "
                f"while the weights keep updating: the model learns nothing from its inputs. This usually means "
                f"the labels no longer match their inputs."
            ),
            evidence=evidence,
            suggestions=[
                "Check that inputs and labels are shuffled, split and batched together (one permutation, or a "
                "Dataset returning (x, y) pairs); print a few samples with their labels.",
                "Check that the model can fit: train on ~20 samples with regularisation off; the loss must go to ~0.",
                "Check that the inputs carry the signal: no constant, zeroed or wrongly preprocessed features, and "
                "the batch the model sees is the one the loss uses.",
            ],
        )
    ]


# -- regularization_too_strong ------------------------------------------------------------------


def regularization_too_strong(view: RunView, th: TaskRuleThresholds) -> list[Diagnosis]:
    """Strong weight decay (or a penalty term) shrinks the weights while the training loss stays high."""
    found = _strong_regularization(view, th)
    loss = _loss(view)
    if found is None or view.last_step < th.reg_min_steps or len(loss) < 10:
        return []
    shrink = _weight_shrink(view)
    if shrink is None or not shrink[0] <= th.reg_shrink:
        return []
    t = task_of(view)
    ref = _reference(t, loss)
    if ref is None:
        return []
    level = float(loss.iloc[-max(10, len(loss) // 10) :].median())
    if not level >= th.reg_loss_frac * ref[0]:
        return []
    text, extra = found
    against = (
        f"what {_baseline_phrase(t)} gives ({ref[0]:.4g})" if ref[1] == "baseline" else f"its start ({ref[0]:.4g})"
    )
    suggestions = (
        [
            "Scale the penalty down 10-100x (an L2 coefficient of 1e-4 to 1e-3 on the summed squared weights is "
            "typical), or drop it and use the optimizer's weight_decay.",
            "Leave biases and normalisation parameters out of the penalty.",
        ]
        if "penalty" in text
        else [
            "Lower weight_decay 10-100x (typical: 1e-4..5e-4 for SGD/Adam, 0.01-0.1 for AdamW).",
            "With Adam, use AdamW: decoupled decay does not fight the adaptive step sizes.",
            "Leave biases and normalisation parameters out of weight decay (a second parameter group).",
        ]
    )
    return [
        Diagnosis(
            code="regularization_too_strong",
            severity="warning",
            step=shrink[1],
            layer=None,
            message=(
                f"Regularisation too strong: {text} shrank the weights to {shrink[0]:.0%} of their initial norm "
                f"while the training loss stays at {level:.4g}, near {against}: the model cannot fit."
            ),
            evidence={"weight_norm_ratio": shrink[0], "loss": level, "reference_loss": ref[0], **extra},
            suggestions=suggestions,
        )
    ]


# -- undertrained -------------------------------------------------------------------------------


def _at_end(view: RunView) -> bool:
    final = _fact(view, "final_step")
    total = _fact(view, "total_steps")
    if isinstance(final, int) and view.last_step >= final:
        return True
    return isinstance(total, int) and total > 0 and view.last_step >= total - 1


def _trend(values: np.ndarray) -> tuple[float, float] | None:
    """Least-squares slope of log(values) per step and its standard error."""
    y = np.log(values)
    n = len(y)
    if n < 8 or not np.all(np.isfinite(y)):
        return None
    x = np.arange(n, dtype=float)
    x -= x.mean()
    slope = float((x * (y - y.mean())).sum() / (x * x).sum())
    resid = y - y.mean() - slope * x
    se = float(math.sqrt((resid**2).sum() / (n - 2) / (x * x).sum()))
    return slope, se


def undertrained(view: RunView, th: TaskRuleThresholds) -> list[Diagnosis]:
    """At the end of the run the loss was still falling fast (judged at the final step only)."""
    if not _at_end(view):
        return []
    loss = _loss(view)
    loss = loss[loss > 0]
    span = max(th.undertrained_window, int(th.undertrained_window_frac * (view.last_step + 1)))
    win = loss[loss.index > view.last_step - span]
    fit = _trend(win.to_numpy(dtype=float))
    if fit is None:
        return []
    slope, se = fit
    n = len(win)
    drop = 1.0 - math.exp(slope * (n - 1))
    if not (drop >= th.undertrained_drop and -slope >= th.undertrained_t * se):
        return []
    t = task_of(view)
    level = float(win.iloc[-max(3, n // 10) :].median())
    ref = _reference(t, loss)
    if level <= th.converged_loss or (ref is not None and level <= th.converged_frac * ref[0]):
        return []
    start, end = float(win.iloc[: max(3, n // 10)].median()), level
    if ref is not None and (start - end) < th.undertrained_drop_ref * ref[0]:
        return []
    if _creeping(view, th):
        return []  # lr_too_low explains a slow run
    per_step = 1.0 - math.exp(slope)
    return [
        Diagnosis(
            code="undertrained",
            severity="warning",
            step=int(win.index[0]),
            layer=None,
            message=(
                f"Training stopped while the loss was still falling fast: {start:.4g} -> {end:.4g} over the last "
                f"{n} steps ({per_step:.1%} per step); more steps would lower it further."
            ),
            evidence={"loss_drop": drop, "drop_per_step": per_step, "trend_t": -slope / se if se > 0 else math.inf},
            suggestions=[
                "Train longer (2-3x the steps, or until the validation loss stops improving).",
                "If the step budget is fixed, raise the learning rate or decay it to the end of the run (cosine).",
                "Use early stopping on the validation loss instead of a fixed number of steps.",
            ],
        )
    ]


# -- lr_too_low (creeping) ----------------------------------------------------------------------


def lr_too_low_creeping(view: RunView, th: TaskRuleThresholds) -> list[Diagnosis]:
    """Updates at most ~3e-4 of the weights in every layer while the loss creeps and is far from fitted."""
    ratios = ratio_checks(view, "max")
    loss = _loss(view)
    k = th.creep_checks
    if len(ratios) < k or view.last_step < th.creep_min_steps or len(loss) < 10:
        return []
    recent = ratios[ratios.index >= th.creep_min_steps].iloc[-k:]
    if len(recent) < k or not float(recent.max()) <= th.creep_ratio:
        return []
    t = task_of(view)
    ref = _reference(t, loss)
    if ref is None:
        return []
    level = float(loss.iloc[-max(10, len(loss) // 10) :].median())
    if not level >= th.creep_loss_frac * ref[0]:
        return []
    if _lr_cut(view, th):
        return []
    steps = [int(s) for s in recent.index]
    gw = _grad_weight(view, steps)
    if gw is not None and gw < th.creep_grad_ratio:
        return []  # the gradients vanish: the small updates are not the learning rate's doing
    ratio = float(recent.median())
    start = float(loss.iloc[:5].median())
    lr_m = view.matrix("lr")
    lr = float(lr_m.iloc[-1].max()) if not lr_m.empty else None
    evidence = {"update_ratio": ratio, "healthy_ratio": 1e-3, "loss": level, "reference_loss": ref[0]}
    if lr is not None and math.isfinite(lr):
        evidence["lr"] = lr
    raise_to = f" (from {lr:.2g} to {lr * 10:.2g}-{lr * 30:.2g})" if lr else ""
    against = f"{level / ref[0]:.0%} of what {_baseline_phrase(t)} gives" if ref[1] == "baseline" else "far from fitted"
    onset = int(ratios[ratios <= th.creep_ratio].index[0]) if (ratios <= th.creep_ratio).any() else steps[0]
    return [
        Diagnosis(
            code="lr_too_low",
            severity="warning",
            step=onset,
            layer=None,
            message=(
                f"Learning rate too low: each step changes the weights by only {ratio:.2g} of their size "
                f"(healthy ~1e-3), so the loss creeps ({start:.4g} -> {level:.4g} in {view.last_step + 1} steps) "
                f"and is still {against}."
            ),
            evidence=evidence,
            suggestions=[
                f"Raise the learning rate 10-30x{raise_to}.",
                "Find it with a learning-rate range test (nndiag preflight --lr-range).",
                "Check for a scheduler or warmup that keeps the learning rate near zero.",
            ],
        )
    ]
