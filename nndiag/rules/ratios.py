"""Update/weight ratios per logging step, and what the learning-rate rules share.

The lecture's yardstick is the ratio of the update to the weight magnitude per parameter tensor,
``update_ratio`` = ||w_after - w_before|| / ||w_before||: about 1e-3 is healthy.

Example:
    >>> import pandas as pd
    >>> from nndiag.rules.ratios import ratio_checks
    >>> from nndiag.rules.view import RunView
    >>> rows = [(s, n, "update_ratio", r) for s in (0, 10) for n, r in (("a.weight", 1e-3), ("b.weight", 3e-3))]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> ratio_checks(RunView(h), "max").tolist()
    [0.003, 0.003]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nndiag import quantities as Q
from nndiag.rules.layers import sustained_start
from nndiag.rules.loss_view import LossThresholds
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class UpdateRatioThresholds(LossThresholds):
    """The update/weight ratios the learning-rate rules compare against (the loss analysis included)."""

    update_ratio_healthy: float = 1e-3  # the lecture's healthy update/weight ratio
    update_ratio_checks: int = 3  # ... median over weight matrices, sustained over this many logging steps


def weight_matrices(view: RunView, names: list[str]) -> list[str]:
    """The trainable weight tensors (2 or more dimensions) among ``names``.

    Without parameter facts, names ending in ``weight`` are taken.
    """
    out = []
    for name in names:
        info = view.param(name)
        if info:
            shape = info.get("shape") or []
            if len(shape) < 2 or info.get("trainable") is False or info.get("in_optimizer") is False:
                continue
        elif not name.endswith("weight"):
            continue
        out.append(name)
    return out


def ratio_checks(view: RunView, how: str = "median") -> pd.Series:
    """Update/weight ratio over the weight matrices at each logging step: their median (or ``"max"``).

    Only finite ratios count (a zero weight tensor has none); steps with none are dropped. Computed once
    per view (the learning-rate rules read it several times at one check).
    """
    return view.derived(("ratio_checks", how), lambda: _ratio_checks(view, how))


def _ratio_checks(view: RunView, how: str) -> pd.Series:
    m = view.matrix(Q.UPDATE_RATIO)
    if m.empty:
        return pd.Series(dtype=float)
    cols = weight_matrices(view, [str(c) for c in m.columns])
    if not cols:
        return pd.Series(dtype=float)
    # on the matrix's array: selecting columns and ``where`` on a DataFrame cost ~0.7 ms of each check
    vals = m.to_numpy(dtype=float)[:, m.columns.get_indexer(cols)]
    finite = np.isfinite(vals)
    keep = finite.any(axis=1)  # steps with no finite ratio are dropped (and give nan* no all-NaN row)
    vals = np.where(finite, vals, np.nan)[keep]
    agg = np.nanmax(vals, axis=1) if how == "max" else np.nanmedian(vals, axis=1)
    return pd.Series(agg, index=m.index[keep], dtype=float)


def streak_from(mask: pd.Series) -> int | None:
    """Index label where the final run of ``True`` begins, or ``None`` if the last entry is ``False``."""
    return sustained_start(mask.index.to_numpy(), mask.to_numpy(dtype=bool), 1)


def last_streak_start(mask: pd.Series) -> int | None:
    """Index label where the last run of ``True`` begins (trailing ``False`` ignored), or ``None``."""
    values = mask.to_numpy(dtype=bool)
    true = np.flatnonzero(values)
    if not len(true):
        return None
    return streak_from(mask.iloc[: int(true[-1]) + 1])


def current_lr(view: RunView) -> float | None:
    """The largest learning rate over the optimizer groups at the last logging step."""
    m = view.matrix(Q.LR)
    if m.empty:
        return None
    last = m.iloc[-1].dropna()
    return float(last.max()) if len(last) else None


def lr_text(lr: float | None, factor_lo: float, factor_hi: float, up: bool) -> str:
    """`` (from 0.1 to 0.01-0.033)``: the learning rate moved by the given factors, for a suggestion."""
    if lr is None or not lr > 0:
        return ""
    a, b = (lr * factor_lo, lr * factor_hi) if up else (lr / factor_hi, lr / factor_lo)
    return f" (from {lr:.2g} to {a:.2g}-{b:.2g})"
