"""The one long -> wide pivot of recorded history, and the forward-order sort of layer names.

Every wide view of the history (the rules' steps x layers matrices, the report's layer x step
heatmaps, preflight's layer x statistic table) is :func:`pivot_last` of the long rows
``(step, layer, stat, value)``; names are put in forward order by :func:`forward_sorted`.

Example:
    >>> import pandas as pd
    >>> h = pd.DataFrame({"step": [0, 0, 1], "layer": ["b", "a", "b"], "stat": ["act_std"] * 3,
    ...                   "value": [1.0, 2.0, 3.0]})
    >>> pivot_last(h, "step", "layer").to_dict()
    {'a': {0: 2.0, 1: nan}, 'b': {0: 1.0, 1: 3.0}}
    >>> forward_sorted(["fc2", "fc1.weight", "input", "fc1", "x"], ["fc1", "fc2"])
    ['input', 'fc1', 'fc1.weight', 'fc2', 'x']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from nndiag.quantities import INPUT_LAYER


def pivot_last(frame: pd.DataFrame, index: str, columns: str) -> pd.DataFrame:
    """Long rows -> a wide table of ``value``, index and columns sorted.

    Where a cell repeats, its last non-NaN value (as ``pivot_table(aggfunc="last", dropna=False)``,
    whose result this equals, at a tenth of its cost: the advisors pivot at every check, on the
    writer thread); NaN where missing; rows and columns without any value are kept.
    """
    if frame.empty:
        return pd.DataFrame(index=pd.Index([], name=index), columns=pd.Index([], name=columns), dtype=float)
    return pivot_arrays(frame[index].to_numpy(), frame[columns].to_numpy(), frame["value"].to_numpy(), index, columns)


def pivot_arrays(
    index_values: np.ndarray, column_values: np.ndarray, values: np.ndarray, index: str, columns: str
) -> pd.DataFrame:
    """:func:`pivot_last` of three aligned arrays (the labels of each row, and its value).

    Example:
        >>> import numpy as np
        >>> pivot_arrays(np.array([1, 0, 1]), np.array(["a", "a", "a"]), np.array([1.0, 2.0, np.nan]),
        ...              "step", "layer").to_dict()
        {'a': {0: 2.0, 1: 1.0}}
    """
    rows, row_labels = pd.factorize(index_values, sort=True)
    cols, col_labels = pd.factorize(column_values, sort=True)
    values = np.asarray(values, dtype=float)
    keep = ~np.isnan(values)
    flat = rows[keep] * len(col_labels) + cols[keep]
    # the last occurrence of each cell: the first one in the reversed order
    uniq, first_of_reversed = np.unique(flat[::-1], return_index=True)
    out = np.full(len(row_labels) * len(col_labels), np.nan)
    out[uniq] = values[keep][::-1][first_of_reversed]
    return pd.DataFrame(
        out.reshape(len(row_labels), len(col_labels)),
        index=pd.Index(row_labels, name=index),
        columns=pd.Index(col_labels, name=columns),
    )


def forward_sorted(names: Iterable[str], forward_order: Sequence[str] | None) -> list[str]:
    """``names`` in forward order: ``input`` first, modules as executed, parameters after their module.

    Names of neither kind come last, alphabetically.
    """
    rank = {name: i for i, name in enumerate([INPUT_LAYER, *(forward_order or [])])}

    def key(name: str) -> tuple[float, str]:
        if name in rank:
            return (rank[name], name)
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        return (rank[owner] + 0.5 if owner in rank else len(rank) + 1.0, name)

    return sorted(names, key=key)


__all__ = ["forward_sorted", "pivot_arrays", "pivot_last"]
