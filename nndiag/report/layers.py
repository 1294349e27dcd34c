"""The layer x step matrices of the heatmaps (layers in forward order), and which parameters are weights.

Example:
    >>> import pandas as pd
    >>> h = pd.DataFrame({"step": [0, 0, 5, 5], "layer": ["b", "a", "b", "a"],
    ...                   "stat": ["act_std"] * 4, "value": [1.0, 2.0, 3.0, 4.0]})
    >>> m = stat_matrix(h, "act_std", {"forward_order": ["a", "b"]})
    >>> m.names, m.steps.tolist(), m.values.tolist()
    (['a', 'b'], [0, 5], [[2.0, 4.0], [1.0, 3.0]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nndiag.facts import ModelFacts
from nndiag.pivot import forward_sorted, pivot_last


@dataclass(frozen=True)
class StatMatrix:
    """One statistic as a matrix: ``values[i, j]`` is layer ``names[i]`` at logging step ``steps[j]``."""

    stat: str
    names: list[str]
    steps: np.ndarray
    values: np.ndarray

    @property
    def empty(self) -> bool:
        return self.values.size == 0


def stat_matrix(history: pd.DataFrame, stat: str, facts: ModelFacts | dict[str, Any] | None = None) -> StatMatrix:
    """Pivot one per-layer statistic into a layer x step matrix (NaN where not recorded)."""
    h = history[(history.stat == stat) & (history.layer != "")]
    if h.empty:
        return StatMatrix(stat, [], np.zeros(0, dtype=np.int64), np.zeros((0, 0)))
    table = pivot_last(h, "layer", "step")
    names = forward_sorted(table.index, ModelFacts.from_dict(facts).forward_order)
    table = table.loc[names]
    return StatMatrix(stat, names, table.columns.to_numpy(dtype=np.int64), table.to_numpy(dtype=np.float64))


def weight_params(names: list[str], facts: ModelFacts | dict[str, Any] | None) -> list[str]:
    """The weight matrices/kernels among parameter names (ndim >= 2 when shapes are known)."""
    known = ModelFacts.from_dict(facts)
    shaped = [n for n in names if len(known.param(n).shape or []) >= 2]
    if shaped:
        return shaped
    return [n for n in names if n.endswith("weight")] or names
