"""Gradient rules: exploding and vanishing gradients.

"First" and "last" layer are the first and last weight tensors (linear/conv, in forward order) that
received a non-zero gradient; parameters no gradient reaches are ``weights_not_updating``'s business.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.gradients import vanishing_gradients
    >>> rows = [(s, p, "grad_norm", g) for s in range(4) for p, g in (("fc1.weight", 1e-6), ("fc2.weight", 0.1))]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> facts = {"forward_order": ["fc1", "act", "fc2"],
    ...          "layers": {"fc1": {"kind": "linear"}, "act": {"kind": "activation"}, "fc2": {"kind": "linear"}},
    ...          "params": {"fc1.weight": {"shape": [8, 4], "layer": "fc1"},
    ...                     "fc2.weight": {"shape": [2, 8], "layer": "fc2"}}}
    >>> [(d.code, d.layer, d.step) for d in vanishing_gradients(RunView(h, facts), AdvisorConfig())]
    [('vanishing_gradients', 'fc1.weight', 0)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.layers import InputScaleThresholds, SustainedThresholds, sustained_since, sustained_start
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class ExplodingThresholds(SustainedThresholds, InputScaleThresholds):
    """When gradients count as exploding."""

    explode_ratio: float = 70.0  # first/last layer gradient-norm ratio above this (repair system)
    explode_growth: float = 100.0  # total gradient norm grown by this factor over the run
    explode_abs: float = 1e6  # total gradient norm above this


@dataclass(frozen=True)
class VanishingThresholds(SustainedThresholds):
    """When gradients count as vanishing."""

    vanish_ratio: float = 1e-3  # first/last layer gradient-norm ratio below this (repair system)
    vanish_abs: float = 1e-4  # ... and the first layer's gradient norm below this
    vanish_rms: float = 1e-7  # vanished everywhere: first layer's RMS gradient below this (cloud debugger: mean|g|)
    vanish_update: float = 1e-6  # ... and its update/weight ratio below this (100x under research "too slow" 1e-4)
    converged_loss: float = 1e-3  # a loss resting below this has converged (as for the loss rules)


# Attention query/key projections (Hugging Face, timm, diffusers names): at initialisation the attention
# logits are small, the softmax is almost uniform and these get ~1e-4 of the others' gradient by design; they
# are not on the path the gradient takes back to the input (values and the residual stream are).
QUERY_KEY_NAMES = ("query", "key", "q_proj", "k_proj", "q_lin", "k_lin", "to_q", "to_k", "wq", "wk")


def weight_params(view: RunView) -> list[str]:
    """Trained weight tensors (>= 2 dims) of the linear/conv layers the forward pass called, in forward order.

    Parameters outside every optimizer are left out (their gradients are never applied), and so are
    attention query/key projections (:data:`QUERY_KEY_NAMES`). Without parameter facts: the
    recorded ``*.weight`` parameters.
    """
    params = view.facts.params
    called = set(view.forward_order)
    trained = bool(view.facts.optimizers)  # else in_optimizer is unknown (no torch optimizer)
    if params:
        names = [
            n
            for n, p in params.items()
            if p.get("trainable", True)
            and not (trained and p.get("in_optimizer") is False)
            and len(p.get("shape") or []) >= 2
            and n.rsplit(".", 1)[-1] == "weight"
            and view.layer(str(p.get("layer", ""))).get("kind") in ("linear", "conv")
            and (not called or p.get("layer") in called)
        ]
    else:
        m = view.matrix(Q.GRAD_NORM)
        names = [str(c) for c in m.columns if str(c).rsplit(".", 1)[-1] == "weight"]
    return view.ordered([n for n in names if n.rsplit(".", 2)[-2:][0] not in QUERY_KEY_NAMES])


def _ratios(view: RunView) -> tuple[pd.DataFrame, pd.Series, dict[int, tuple[str, str]]]:
    """Grad-norm matrix, first/last weight-gradient ratio per step, and the (first, last) pair used per step.

    First and last are the first and last weight tensors with a finite, non-zero gradient at that step.
    Computed once per view (the exploding and vanishing gradient rules both read it).
    """
    return view.derived("gradient_ratios", lambda: _ratios_of(view))


def _ratios_of(view: RunView) -> tuple[pd.DataFrame, pd.Series, dict[int, tuple[str, str]]]:
    g = view.matrix(Q.GRAD_NORM)
    weights = [w for w in weight_params(view) if w in g.columns]
    if g.empty or len(weights) < 2:
        return g, pd.Series(dtype=float), {}
    # vectorised over the logging steps (a per-step loop made each check grow ~0.1 ms per logging step), on the
    # matrix's array (selecting the columns as a DataFrame cost more than the arithmetic)
    vals = g.to_numpy(dtype=float)[:, g.columns.get_indexer(weights)]
    live = np.isfinite(vals) & (vals > 0)
    usable = live.sum(axis=1) >= 2
    if not usable.any():
        return g, pd.Series(dtype=float), {}
    vals, live = vals[usable], live[usable]
    steps = g.index.to_numpy()[usable].astype(int).tolist()
    first = live.argmax(axis=1)  # the first weight tensor with a live gradient at each step
    last = live.shape[1] - 1 - live[:, ::-1].argmax(axis=1)
    rows = np.arange(len(steps))
    ratio = pd.Series(vals[rows, first] / vals[rows, last], index=steps, dtype=float)
    pairs = {s: (weights[a], weights[b]) for s, a, b in zip(steps, first.tolist(), last.tolist(), strict=True)}
    return g, ratio, pairs


def _input_scale(view: RunView) -> float:
    """RMS of the last recorded model input (NaN when not recorded)."""
    mean, std = view.series(Q.ACT_MEAN, Q.INPUT_LAYER), view.series(Q.ACT_STD, Q.INPUT_LAYER)
    if mean.empty or std.empty:
        return math.nan
    return math.hypot(float(mean.iloc[-1]), float(std.iloc[-1]))


def _exploded_into_nonfinite(
    view: RunView, grads: pd.DataFrame, total: pd.Series, first_bad: int, t: ExplodingThresholds
) -> bool:
    """Whether the gradients that turned NaN/Inf at ``first_bad`` got there by exploding.

    Yes when the input was finite and either the finite total norm before had passed ``explode_abs``
    or grown ``explode_growth``-fold, or the backward pass overflowed: Inf gradients while the loss and
    every activation of that step were finite. NaN from corrupt data or log(0) is not an explosion.
    """
    inp = view.series(Q.NONFINITE, Q.INPUT_LAYER)
    if len(inp) and (inp[inp.index <= first_bad] > 0).any():
        return False
    before = total[(total.index < first_bad)].dropna()
    if len(before):
        baseline = float(before.iloc[: min(3, len(before))].median())
        if float(before.max()) > t.explode_abs or (
            baseline > 0 and float(before.iloc[-1]) > t.explode_growth * baseline
        ):
            return True
    at = grads[grads.step == first_bad].value
    if not at.map(lambda v: math.isinf(float(v))).any():
        return False
    loss = view.series(Q.LOSS)
    if first_bad in loss.index and not math.isfinite(float(loss[first_bad])):
        return False
    acts = view.matrix(Q.NONFINITE)
    return bool(acts.empty or first_bad not in acts.index or not (acts.loc[first_bad].fillna(0) > 0).any())


@rule(
    "exploding_gradients",
    requires=(Q.GRAD_NORM,),
    severity=("warning", "error"),
    rank=200,
    explained_by=("target_not_normalized",),
    thresholds=ExplodingThresholds,
    summary="error: total gradient norm > 1e6 sustained, or NaN/Inf gradients that came from an explosion (finite "
    "input, norm had passed 1e6 or grown 100x, or Inf gradients with a finite loss). Warning: total norm sustained "
    "at 100x its starting median, or the first trained weight's gradient norm > 70x the last one's (skipped while "
    "the input is unnormalised)",
)
def exploding_gradients(view: RunView, t: ExplodingThresholds) -> list[Diagnosis]:
    """Gradients that are non-finite, huge, growing by orders of magnitude, or far larger early than late.

    Errors: NaN/Inf gradients that exploded (not those of corrupt data or log(0): see
    :func:`_exploded_into_nonfinite`), or a total gradient norm above ``explode_abs``. Warnings: a total
    norm grown ``explode_growth``-fold since the start, or a first/last layer gradient ratio above
    ``explode_ratio``, each sustained over ``sustained_checks`` logging steps.

    The ratio test is skipped while the model input is unscaled: a large input makes the first layer's
    gradient large (``input_not_normalized`` names that cause).
    """
    k = t.sustained_checks
    grads = view.rows(Q.GRAD_NORM)
    if grads.empty:
        return []
    grad_steps = grads.step.to_numpy()
    bad = ~np.isfinite(grads.value.to_numpy(dtype=float))
    steps = np.unique(grad_steps)  # sorted
    start = sustained_start(steps, np.isin(steps, grad_steps[bad]), 1)  # the trailing run of steps with NaN/Inf
    fixes = [
        "Clip the gradient norm (torch.nn.utils.clip_grad_norm_, or gradient_clip_val in Lightning) near the "
        "90th percentile of the recorded norms.",
        "Lower the learning rate (e.g. by 10x).",
        "Check the initialisation (Xavier/He scale) and add normalisation layers (BatchNorm/LayerNorm).",
    ]
    total = view.series(Q.GRAD_NORM_TOTAL)
    if start is not None:
        if not _exploded_into_nonfinite(view, grads, total, start, t):
            return []  # NaN from the data or the loss (nonfinite_input / nonfinite_loss name it), not an explosion
        nonfinite = grads[bad]
        first = [str(n) for n in nonfinite[nonfinite.step == start].layer.unique()]
        layer = view.ordered(first)[0]
        count = float(nonfinite[nonfinite.step == steps[-1]].layer.nunique())
        return [
            Diagnosis(
                code="exploding_gradients",
                severity="error",
                step=start,
                layer=layer,
                message=f"The gradients exploded to NaN/Inf at step {start}, first in {layer}.",
                evidence={"nonfinite_params": count, "first_step": float(start)},
                suggestions=[
                    fixes[1],
                    fixes[0],
                    "Look for log/sqrt/division of values that can reach 0 in the loss or the model, and under "
                    "fp16 use a GradScaler (or bf16).",
                ],
            )
        ]
    total = total.dropna()
    if len(total):
        start = sustained_since(total > t.explode_abs, k)
        if start is not None:
            value = float(total.iloc[-1])
            return [
                Diagnosis(
                    code="exploding_gradients",
                    severity="error",
                    step=start,
                    layer=None,
                    message=f"The total gradient norm is {value:.3g}, above {t.explode_abs:.0e}.",
                    evidence={"grad_norm_total": value},
                    suggestions=fixes,
                )
            ]
        baseline = float(total.iloc[: min(3, len(total))].median())
        if len(total) > 3 and baseline > 0:
            start = sustained_since(total > t.explode_growth * baseline, k)
            if start is not None:
                value = float(total.iloc[-1])
                return [
                    Diagnosis(
                        code="exploding_gradients",
                        severity="warning",
                        step=start,
                        layer=None,
                        message=(
                            f"The total gradient norm grew {value / baseline:.0f}x since the start, to {value:.3g}."
                        ),
                        evidence={"grad_norm_total": value, "grad_norm_start": baseline, "growth": value / baseline},
                        suggestions=fixes,
                    )
                ]
    scale = _input_scale(view)
    if math.isfinite(scale) and scale > max(t.input_mean_abs, t.input_std_max):
        return []
    g, ratio, pairs = _ratios(view)
    if ratio.empty:
        return []
    start = sustained_since(ratio > t.explode_ratio, k)
    if start is None:
        return []
    last = int(ratio.index[-1])
    first_w, last_w = pairs[last]
    value = float(ratio.iloc[-1])
    return [
        Diagnosis(
            code="exploding_gradients",
            severity="warning",
            step=start,
            layer=first_w,
            message=(
                f"The gradient of {first_w} is {value:.0f}x larger than that of {last_w}: gradients grow "
                "on their way back to the input."
            ),
            evidence={
                "grad_norm_first": float(g.loc[last, first_w]),
                "grad_norm_last": float(g.loc[last, last_w]),
                "ratio": value,
            },
            suggestions=fixes,
        )
    ]


@rule(
    "vanishing_gradients",
    requires=(Q.GRAD_NORM,),
    rank=220,
    thresholds=VanishingThresholds,
    summary="first/last gradient-norm ratio < 1e-3 and first-layer norm < 1e-4 (published), or every layer's "
    "gradient tiny (first layer RMS < 1e-7 and update ratio < 1e-6) while the loss has not converged",
)
def vanishing_gradients(view: RunView, t: VanishingThresholds) -> list[Diagnosis]:
    """Early layers' gradients orders of magnitude below the late layers', or gradients vanished everywhere.

    Published rule: first/last ratio below ``vanish_ratio`` and first below ``vanish_abs``. Vanished
    throughout the network (the lecture's collapsed 0.01*randn network, where every weight gradient
    is tiny): the first layer's RMS gradient below ``vanish_rms`` and its update ratio below
    ``vanish_update`` while the loss has not converged. Both sustained over ``sustained_checks``.
    """
    g, ratio, pairs = _ratios(view)
    if g.empty:
        return []
    k = t.sustained_checks
    acts = {view.layer(n).get("activation") for n in view.forward_order}
    fixes = [
        "Initialise with He (std sqrt(2/fan_in)) for ReLU layers or Xavier (std 1/sqrt(fan_in)) for tanh "
        "layers instead of a small fixed scale.",
        "Add BatchNorm (or LayerNorm) layers.",
        "Add residual (skip) connections so gradients reach the early layers directly.",
    ]
    squashing = acts & {"sigmoid", "tanh", "hardtanh", "softsign"}
    relu = (
        "Use ReLU (or GELU) instead of sigmoid/tanh in hidden layers: their derivative is at most 0.25 (sigmoid) "
        "or 1 (tanh) and ~0 when saturated."
    )
    if squashing:
        fixes.insert(0, relu)
    values = g.to_numpy(dtype=float)  # numpy below: Series arithmetic was most of this rule's time at a check
    if not ratio.empty:
        ratio_steps, ratios = ratio.index.to_numpy(), ratio.to_numpy(dtype=float)
        rows = g.index.get_indexer(ratio.index)
        cols = g.columns.get_indexer([pairs[s][0] for s in ratio.index])
        first_abs = values[rows, cols]
        start = sustained_start(ratio_steps, (ratios < t.vanish_ratio) & (first_abs < t.vanish_abs), k)
        if start is not None:
            last = int(ratio_steps[-1])
            first_w, last_w = pairs[last]
            value = float(ratios[-1])
            return [
                Diagnosis(
                    code="vanishing_gradients",
                    severity="warning",
                    step=start,
                    layer=first_w,
                    message=(
                        f"The gradient of {first_w} ({float(first_abs[-1]):.2g}) is {1 / value:.2g}x smaller "
                        f"than that of {last_w}: gradients vanish on their way back to the input."
                    ),
                    evidence={
                        "grad_norm_first": float(first_abs[-1]),
                        "grad_norm_last": float(g.loc[last, last_w]),
                        "ratio": value,
                    },
                    suggestions=fixes,
                )
            ]
    column = {str(c): i for i, c in enumerate(g.columns)}
    weights = [w for w in weight_params(view) if w in column and values[-1, column[w]] > 0]
    if not weights:
        return []  # no gradient at all reaches them: weights_not_updating
    first_w = weights[0]
    loss = view.series(Q.LOSS).dropna()
    if len(loss) and float(loss.iloc[-1]) < t.converged_loss:
        return []  # a converged loss has small gradients
    numel = float(view.param(first_w).get("numel") or 0)
    if numel <= 0:
        return []
    grad = values[:, column[first_w]]
    recorded = ~np.isnan(grad)
    steps, rms = g.index.to_numpy()[recorded], grad[recorded] / math.sqrt(numel)
    tiny = (rms < t.vanish_rms) & (rms > 0)
    upd = view.matrix(Q.UPDATE_RATIO)
    moved: np.ndarray | None = None
    if not upd.empty and first_w in upd.columns:
        at = upd.index.get_indexer(steps)
        moved = np.where(at >= 0, upd[first_w].to_numpy(dtype=float)[at], np.nan)
        tiny &= ~(moved >= t.vanish_update)  # NaN (not recorded) does not veto
    start = sustained_start(steps, tiny, k)
    if start is None:
        return []
    value = float(rms[-1])
    evidence = {"grad_rms_first": value}
    if moved is not None and math.isfinite(float(upd[first_w].iloc[-1])):
        evidence["update_ratio_first"] = float(upd[first_w].iloc[-1])
    fixes.sort(key=lambda f: not f.startswith("Initialise"))
    return [
        Diagnosis(
            code="vanishing_gradients",
            severity="warning",
            step=start,
            layer=first_w,
            message=f"Gradients have vanished: the RMS gradient of {first_w} is {value:.2g}; its weights barely move.",
            evidence=evidence,
            suggestions=fixes,
        )
    ]
