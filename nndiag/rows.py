"""Columnar rows ``(step, layer, stat, value)``: the unit every sink consumes.

Packets of one kind (light logging steps, full ones) carry the same names in the same order
step after step; :class:`LayoutCache` lets a sink work out what it needs per name (series ids,
codes, tags) once per such layout instead of once per row.

Example:
    >>> import numpy as np
    >>> from nndiag.rows import Rows
    >>> Rows(np.array([0]), ["fc"], ["dead_frac"], np.array([0.5])).frame().shape
    (1, 4)

"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import pandas as pd

COLUMNS = ["step", "layer", "stat", "value"]
T = TypeVar("T")


@dataclass
class Rows:
    """Parallel columns of statistics rows."""

    step: np.ndarray
    layers: list[str]
    stats: list[str]
    value: np.ndarray
    _layout: tuple[tuple[str, ...], tuple[str, ...]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def layout(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The names as a hashable key: ``(layers, stats)`` as tuples (computed once per Rows)."""
        if self._layout is None:
            self._layout = (tuple(self.layers), tuple(self.stats))
        return self._layout

    def __len__(self) -> int:
        return len(self.stats)

    def frame(self) -> pd.DataFrame:
        """As a long-format DataFrame with columns step, layer, stat, value."""
        return pd.DataFrame({"step": self.step, "layer": self.layers, "stat": self.stats, "value": self.value})


@dataclass
class LayoutCache(Generic[T]):
    """What a sink derives from a Rows' names, computed once per distinct layout (at most ``size`` kept).

    ``make(rows)`` is called on a miss; if it raises, nothing is kept (the next Rows try again). The
    cache is emptied when full: layouts are few (the first steps, full and light logging steps,
    loss-only packets of a few lengths), so that rarely happens and costs one recomputation each.

    Example:
        >>> import numpy as np
        >>> cache = LayoutCache(size=8)
        >>> calls = []
        >>> def tags(rows):
        ...     calls.append(1)
        ...     return [f"{layer}/{stat}" for layer, stat in zip(rows.layers, rows.stats)]
        >>> for step in range(3):
        ...     got = cache.get(Rows(np.array([step]), ["fc"], ["act_std"], np.array([1.0])), tags)
        >>> got, len(calls)
        (['fc/act_std'], 1)

    """

    size: int = 64
    _items: dict[tuple[tuple[str, ...], tuple[str, ...]], T] = field(default_factory=dict, repr=False)

    def get(self, rows: Rows, make: Callable[[Rows], T]) -> T:
        """The value for ``rows``' layout, made by ``make(rows)`` the first time it is seen."""
        key = rows.layout
        hit = self._items.get(key)
        if hit is not None:
            return hit
        value = make(rows)
        if len(self._items) >= self.size:
            self._items.clear()
        self._items[key] = value
        return value
