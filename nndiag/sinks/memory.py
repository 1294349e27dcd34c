"""The in-memory history behind ``cb.history``, bounded in rows.

Example:
    >>> import numpy as np
    >>> from nndiag.rows import Rows
    >>> from nndiag.sinks.memory import MemoryHistory
    >>> h = MemoryHistory(max_rows=10)
    >>> h.write_rows(Rows(np.array([0, 1]), ["", ""], ["loss", "loss"], np.array([2.3, 2.1])))
    >>> h.frame().value.tolist(), h.complete
    ([2.3, 2.1], True)

"""

from __future__ import annotations

import threading
from collections import deque

import pandas as pd

from nndiag.rows import COLUMNS, Rows


class MemoryHistory:
    """Keeps the most recent ``max_rows`` rows; ``complete`` is False once older rows were dropped."""

    def __init__(self, max_rows: int = 5_000_000) -> None:
        self.max_rows = max_rows
        self._chunks: deque[Rows] = deque()
        self._rows = 0
        self._lock = threading.Lock()
        self.complete = True

    def write_rows(self, rows: Rows) -> None:
        """Append rows, dropping the oldest chunks beyond ``max_rows``."""
        if not len(rows):
            return
        with self._lock:
            self._chunks.append(rows)
            self._rows += len(rows)
            while self._rows > self.max_rows and len(self._chunks) > 1:
                self._rows -= len(self._chunks.popleft())
                self.complete = False

    def frame(self) -> pd.DataFrame:
        """All kept rows as a long-format DataFrame, sorted by step (stable)."""
        with self._lock:
            chunks = list(self._chunks)
        if not chunks:
            return pd.DataFrame(
                {c: pd.Series(dtype=t) for c, t in zip(COLUMNS, ["int64", "object", "object", "float64"], strict=True)}
            )
        df = pd.concat([c.frame() for c in chunks], ignore_index=True)
        return df.sort_values("step", kind="stable", ignore_index=True)
