"""``RunView``: the read-only view of a run that rules evaluate (history + model facts).

Rules never touch the raw DataFrame layout; they ask the view for a series or a
steps x layers matrix (:func:`nndiag.pivot.pivot_arrays`), and for model facts
(:class:`~nndiag.facts.ModelFacts`; a plain facts dict is converted) in forward order.

Example:
    >>> import pandas as pd
    >>> from nndiag.rules.view import RunView
    >>> h = pd.DataFrame({"step": [0, 1, 0, 0], "layer": ["", "", "fc", "act"],
    ...                   "stat": ["loss", "loss", "act_std", "act_std"], "value": [2.3, 2.1, 1.0, 0.5]})
    >>> v = RunView(h, {"forward_order": ["fc", "act"]})
    >>> v.series("loss").tolist(), v.last_step
    ([2.3, 2.1], 1)
    >>> v.matrix("act_std").columns.tolist()
    ['fc', 'act']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from functools import cached_property
from typing import Any, TypeVar, cast

import numpy as np
import pandas as pd

from nndiag import quantities as Q
from nndiag.facts import LayerFacts, ModelFacts, ParamFacts
from nndiag.pivot import forward_sorted, pivot_arrays

T = TypeVar("T")


class RunView:
    """History (long format) and facts of one run, with cached pivots."""

    def __init__(
        self, history: pd.DataFrame, facts: ModelFacts | dict[str, Any] | None = None, finished: bool = False
    ) -> None:
        self.history = history
        self.finished = finished  # the run has ended: end-of-run rules (undertrained) may speak
        self.facts = ModelFacts.from_dict(facts)
        self._matrices: dict[str, pd.DataFrame] = {}
        self._series: dict[str, dict[str, pd.Series]] = {}
        self._frames: dict[str, pd.DataFrame] = {}
        self._derived: dict[Hashable, Any] = {}
        # the history's row numbers of each statistic, in history order: one factorize and one sort
        # per check instead of a DataFrame per statistic (a check asks for most statistics' series)
        self._rows: dict[str, np.ndarray] = {}
        if len(history):
            codes, names = pd.factorize(history["stat"].to_numpy())
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
            self._rows = {str(name): order[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}
            self._step = history["step"].to_numpy()
            self._layer = history["layer"].to_numpy()
            self._value = history["value"].to_numpy(dtype=float)

    @cached_property
    def last_step(self) -> int:
        """The last optimizer step with any data (-1 for an empty run)."""
        return int(self.history.step.max()) if len(self.history) else -1

    def has(self, stat: str) -> bool:
        """Whether ``stat`` was recorded at all."""
        return stat in self._rows

    def derived(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, once per view: an analysis several rules read at one check (callers must not modify it).

        Example:
            >>> v = RunView(pd.DataFrame())
            >>> calls = []
            >>> [v.derived("x", lambda: calls.append(1) or 5) for _ in range(2)], len(calls)
            ([5, 5], 1)
        """
        if key not in self._derived:
            self._derived[key] = compute()
        return cast(T, self._derived[key])

    def rows(self, stat: str) -> pd.DataFrame:
        """The history's rows of one statistic (in history order, original index; empty if unrecorded)."""
        frame = self._frames.get(stat)
        if frame is None:
            idx = self._rows.get(stat)
            frame = self.history.iloc[idx] if idx is not None else self.history.iloc[:0]
            self._frames[stat] = frame
        return frame

    def series(self, stat: str, layer: str = "") -> pd.Series:
        """Values of one statistic of one layer, indexed by step (run-wide stats: layer ``""``).

        Cached per view (the rules only read it): each statistic is split by layer once per check.
        """
        by_layer = self._series.get(stat)
        if by_layer is None:
            by_layer = {}
            idx = self._rows.get(stat)
            if idx is not None:
                codes, names = pd.factorize(self._layer[idx])  # a missing layer name: code -1, left out
                steps = self._step[idx]
                order = np.lexsort((steps, codes))  # by layer, then by step (stable)
                bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
                values = self._value[idx][order]
                steps = steps[order]
                for i, name in enumerate(names):
                    a, b = bounds[i], bounds[i + 1]
                    by_layer[str(name)] = pd.Series(values[a:b], index=steps[a:b], dtype=float)
            self._series[stat] = by_layer
        found = by_layer.get(layer)
        return pd.Series(dtype=float) if found is None else found

    def matrix(self, stat: str) -> pd.DataFrame:
        """Steps x layers matrix of one statistic; columns in forward order where known."""
        if stat not in self._matrices:
            idx = self._rows.get(stat)
            if idx is None or not len(idx):
                self._matrices[stat] = pd.DataFrame()
            else:
                m = pivot_arrays(self._step[idx], self._layer[idx], self._value[idx], "step", "layer")
                self._matrices[stat] = m[self.ordered([str(c) for c in m.columns])]
        return self._matrices[stat]

    def ordered(self, names: list[str]) -> list[str]:
        """``names`` sorted by forward order (``input`` first; parameters after their module)."""
        return forward_sorted(names, self.facts.forward_order)

    @property
    def forward_order(self) -> list[str]:
        """Recorded modules in the order the forward pass called them."""
        return list(self.facts.forward_order)

    def layer(self, name: str) -> LayerFacts:
        """Facts of one module (all unknown when it was not recorded)."""
        return self.facts.layer(name)

    def param(self, name: str) -> ParamFacts:
        """Facts of one parameter (all unknown when it is not known)."""
        return self.facts.param(name)

    def first_nonfinite(self, layers: list[str] | None = None, upto: int | None = None) -> tuple[str, int] | None:
        """``(layer, step)`` where NaN/Inf first appeared: the earliest step, then forward order.

        Only ``layers`` (default: every recorded module and the input) and steps ``<= upto`` count.
        """
        m = self.matrix(Q.NONFINITE)
        if m.empty:
            return None
        if layers is not None:
            m = m[[c for c in m.columns if c in layers]]
        if upto is not None:
            m = m[m.index <= upto]
        bad = m.fillna(0) > 0
        rows = bad.any(axis=1)
        if not rows.any():
            return None
        step = int(rows.index[rows.to_numpy()][0])
        return self.ordered([str(c) for c in bad.columns[bad.loc[step].to_numpy()]])[0], step

    def num_classes(self) -> int | None:
        """Classes of a softmax classifier, or ``None``.

        ``facts['num_classes']`` if the user set it, else the width of the last recorded module's
        output when that module is a linear layer with at least 2 outputs.
        """
        user = self.facts.num_classes
        if isinstance(user, int) and user >= 2:
            return user
        if not self.forward_order:
            return None
        last = self.layer(self.forward_order[-1])
        shape = last.out_shape or []
        if last.kind == "linear" and shape and isinstance(shape[-1], int) and shape[-1] >= 2:
            return int(shape[-1])
        return None


def finite(values: pd.Series) -> pd.Series:
    """The finite values of a series (of a float series: one vectorised test)."""
    if values.dtype.kind == "f":
        return values[np.isfinite(values.to_numpy())]
    return values[values.map(lambda v: isinstance(v, float) and math.isfinite(v))]
