"""Parameter rules: trainable weights that never change, with the cause.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.params import weights_not_updating
    >>> h = pd.DataFrame([(s, "fc.weight", "update_ratio", 0.0) for s in range(4)],
    ...                  columns=["step", "layer", "stat", "value"])
    >>> facts = {"params": {"fc.weight": {"trainable": True, "in_optimizer": False, "layer": "fc"}},
    ...          "optimizers": [{"class": "SGD"}]}
    >>> [(d.code, d.layer, d.severity) for d in weights_not_updating(RunView(h, facts), AdvisorConfig())]
    [('weights_not_updating', 'fc.weight', 'error')]

Initialisation rules (``poor_init_scale``, ``symmetric_init``) are in :mod:`nndiag.rules.init`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis, Severity
from nndiag.rules.init import poor_init_scale, symmetric_init
from nndiag.rules.layers import HARD_ZERO_ACTIVATIONS
from nndiag.rules.registry import NoThresholds, rule
from nndiag.rules.view import RunView

__all__ = ["poor_init_scale", "symmetric_init", "weights_not_updating"]


@dataclass(frozen=True)
class FrozenThresholds:
    """When a parameter counts as not updating."""

    frozen_checks: int = 3  # parameters identical over this many logging steps (published: 3-5 checks)
    frozen_checks_after_change: int = 10  # ... a parameter that moved earlier must stay identical this many checks
    # (alternating optimizers, e.g. a GAN generator stepped every 5th batch, leave short runs of zero updates)
    dead_full_frac: float = 0.99  # a ReLU layer this dead passes no gradient (explains weights that never update)
    frozen_converged_loss: float = 1e-6  # a loss at or below this has converged: unchanged weights are expected


_CAUSES: dict[str, tuple[Severity, str, list[str]]] = {
    "not_in_optimizer": (
        "error",
        "not in any optimizer",
        [
            "Pass every trainable parameter to the optimizer (e.g. torch.optim.Adam(model.parameters())); "
            "create the optimizer after all layers are added to the model.",
            "If the parameters are meant to stay fixed, set requires_grad=False on them.",
        ],
    ),
    "no_gradient": (
        "warning",
        "receiving no gradient",
        [
            "Make sure the parameters are used in the forward pass that computes the loss, without "
            ".detach(), torch.no_grad() or .data in between.",
            "If they are meant to stay fixed (an unused head, a frozen part), set requires_grad=False.",
        ],
    ),
    "zero_lr": (
        "warning",
        "trained with a learning rate of 0",
        [
            "Check the learning rate and its schedule (warm-up starting at 0, a scheduler that decays to 0).",
        ],
    ),
    "other": (
        "warning",
        "receiving gradients that the optimizer step does not apply",
        [
            "Check what runs between backward() and the step: gradient clipping to 0, a hook that restores the "
            "weights, or updates below the precision of a bf16/fp16 weight (keep fp32 master weights).",
        ],
    ),
}


def _stuck(view: RunView, names: list[str]) -> pd.DataFrame:
    """Steps x parameters: True where a logging step left the parameter exactly unchanged.

    The update ratio is 0; or, where it is undefined (||w|| = 0) or not recorded, the weight norm is
    exactly the one of the previous logging step.
    """
    upd = view.matrix(Q.UPDATE_RATIO)
    wn = view.matrix(Q.WEIGHT_NORM)
    index = upd.index.union(wn.index)
    r = upd.reindex(index=index, columns=names).to_numpy(dtype=float)
    w = wn.reindex(index=index, columns=names).to_numpy(dtype=float)
    previous = np.vstack([np.full((min(1, len(w)), len(names)), np.nan), w[:-1]])  # w.shift(1)
    with np.errstate(invalid="ignore"):  # NaN compares unequal, as in pandas
        same = (w == previous) | (w == 0)
        stuck = (r == 0) | (np.isnan(r) & ~np.isnan(w) & same)
    return pd.DataFrame(stuck, index=index, columns=names)


def trailing_true(mask: np.ndarray) -> np.ndarray:
    """Per column of a 2-D boolean array: how many of its last rows are all ``True`` (its trailing run).

    Example:
        >>> trailing_true(np.array([[True, False], [True, True], [False, True]])).tolist()
        [0, 2]
    """
    if mask.shape[0] == 0:
        return np.zeros(mask.shape[1], dtype=int)
    rev = mask[::-1]
    return np.where(rev.all(axis=0), mask.shape[0], rev.argmin(axis=0))


def _explained_by_dead_units(view: RunView, param: str, t: FrozenThresholds) -> bool:
    """Whether a fully dead ReLU blocks the parameter's gradient (``dead_units`` then names the cause).

    A dead ReLU after its layer passes nothing back; one feeding a weight's layer makes its input all zero.
    """
    dead = view.matrix(Q.DEAD_FRAC)
    layer = str(view.param(param).get("layer", ""))
    order = view.forward_order
    if dead.empty or layer not in order:
        return False
    last = dead.iloc[-1]

    def fully_dead(name: str) -> bool:
        info = view.layer(name)
        return (
            info.get("kind") == "activation"
            and info.get("activation") in HARD_ZERO_ACTIVATIONS
            and name in last.index
            and float(last[name]) >= t.dead_full_frac
        )

    i = order.index(layer)
    if any(fully_dead(n) for n in order[i + 1 :]):
        return True
    if param.rsplit(".", 1)[-1] == "bias":
        return False
    for prev in reversed(order[:i]):
        kind = view.layer(prev).get("kind")
        if kind == "activation":
            return fully_dead(prev)
        if kind not in ("norm", "dropout", "pooling", "other"):
            return False
    return False


def _bias_before_batchnorm(view: RunView, param: str) -> bool:
    """A bias followed by BatchNorm/InstanceNorm: the normalisation subtracts it, so its gradient is ~0 by design."""
    if param.rsplit(".", 1)[-1] != "bias":
        return False
    layer = str(view.param(param).get("layer", ""))
    order = view.forward_order
    if layer not in order or view.layer(layer).get("kind") not in ("linear", "conv"):
        return False
    for nxt in order[order.index(layer) + 1 :]:
        info = view.layer(nxt)
        if info.get("kind") == "dropout":
            continue
        return bool(info.get("is_batchnorm")) or str(info.get("module_type", "")).startswith("InstanceNorm")
    return False


def _weights_first(ordered: list[str]) -> list[str]:
    """Parameters in forward order, each module's weight before its other parameters."""
    rank: dict[str, int] = {}
    for n in ordered:
        rank.setdefault(n.rsplit(".", 1)[0], len(rank))
    return sorted(ordered, key=lambda n: (rank[n.rsplit(".", 1)[0]], not n.rsplit(".", 1)[-1].startswith("weight")))


def _cause(view: RunView, param: str, since: int) -> str:
    info = view.param(param)
    if info.get("in_optimizer") is False and view.facts.optimizers:
        return "not_in_optimizer"
    grads = view.matrix(Q.GRAD_NORM)
    if param in grads.columns:
        g = grads[param][grads.index >= since].dropna()
        if len(g) and (g == 0).all():
            return "no_gradient"
    lrs = view.rows(Q.LR)
    lrs = lrs[lrs.step >= since]
    if len(lrs) and (lrs.groupby("layer").value.max() == 0).any():
        return "zero_lr"
    return "other"


@rule(
    "weights_not_updating",
    severity=("warning", "error"),
    rank=140,
    thresholds=FrozenThresholds,
    summary="a trainable parameter whose update ratio is exactly 0 at every check (≥ 3; 10 for one that moved "
    "before), with the cause: not in any optimizer (error), no gradient reaching it, lr 0, or the step not applying "
    "(warning). Not for frozen parameters, biases before BatchNorm, or layers behind a fully dead ReLU",
)
def weights_not_updating(view: RunView, t: FrozenThresholds) -> list[Diagnosis]:
    """Trainable parameters left exactly unchanged by the optimizer steps, with the cause.

    Unchanged (update ratio exactly 0) at every logging step (at least ``frozen_checks`` of them),
    or at the last ``frozen_checks_after_change`` logging steps for a parameter that moved before.
    Causes: not in any optimizer; no gradient reaches it; learning rate 0; the step does not apply
    it. Parameters whose gradient a fully dead ReLU blocks are left to ``dead_units``, those of a
    symmetric network to ``symmetric_init``; biases before BatchNorm get ~0 gradient by design. Frozen
    parameters (``requires_grad=False``) are not trainable and never reported.
    """
    params = view.facts.params
    loss = view.series(Q.LOSS).dropna()
    if len(loss) and 0 <= float(loss.iloc[-1]) <= t.frozen_converged_loss:
        return []  # converged (e.g. a clamped BCE at ~1e-7): updates of zero are the fixed point, not a fault
    names = [n for n, p in params.items() if p.get("trainable", True)]
    if not names or not (view.has(Q.UPDATE_RATIO) or view.has(Q.WEIGHT_NORM)):
        return []
    stuck = _stuck(view, names)
    if stuck.empty:
        return []
    groups: dict[str, list[tuple[str, int]]] = {}
    symmetric: bool | None = None  # computed on demand: never-broken symmetric layers explain zero gradients
    steps = stuck.index.to_numpy()  # sorted, unique (a union of step indexes)
    trailing = dict(zip(names, trailing_true(stuck.to_numpy(dtype=bool)).tolist(), strict=True))
    for n in _weights_first(view.ordered(names)):
        if _bias_before_batchnorm(view, n):
            continue
        run = trailing[n]  # the last `run` logging steps left it unchanged
        if run == 0 or run < t.frozen_checks:
            continue
        start = int(steps[len(steps) - run])
        if run < len(steps) and run < t.frozen_checks_after_change:  # it moved before: needs the longer streak
            continue
        cause = _cause(view, n, start)
        if cause == "no_gradient":
            if symmetric is None:
                symmetric = bool(symmetric_init(view, NoThresholds()))
            if symmetric or _explained_by_dead_units(view, n, t):
                continue
        groups.setdefault(cause, []).append((n, start))
    out = []
    for cause, hits in groups.items():
        severity, what, suggestions = _CAUSES[cause]
        first, start = hits[0]
        numel = sum(float(params[n].get("numel") or 0) for n, _ in hits)
        shown = ", ".join(n for n, _ in hits[:3]) + (f" and {len(hits) - 3} more" if len(hits) > 3 else "")
        noun = "trainable parameter" if len(hits) == 1 else f"{len(hits)} trainable parameters"
        out.append(
            Diagnosis(
                code="weights_not_updating",
                severity=severity,
                step=min(s for _, s in hits),
                layer=first,
                message=(
                    f"The {noun} {shown} never change{'s' if len(hits) == 1 else ''}: "
                    f"{'it is' if len(hits) == 1 else 'they are'} {what}."
                ),
                evidence={
                    "params": float(len(hits)),
                    "numel": numel,
                    "checks_unchanged": float(int((stuck.index >= start).sum())),
                },
                suggestions=list(suggestions),
            )
        )
    return out
