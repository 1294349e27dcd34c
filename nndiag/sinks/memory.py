"""The in-memory history behind ``cb.history``, bounded in rows.

Rows are kept column-wise in growable numpy arrays: the step (int64), the value (float64) and
one int32 code per distinct ``(layer, stat)`` pair, about 20 bytes a row whatever the names.
Appending a packet is amortised O(rows of the packet), dropping the oldest packets beyond
``max_rows`` is O(1), and :meth:`MemoryHistory.frame` is one vectorised pass over the window
(not one DataFrame per packet), so an advisor check does not slow down with the number of
packets recorded. The run store on disk keeps everything; ``history`` reads it back when this
window no longer holds the whole run (see :attr:`MemoryHistory.complete`).

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

import numpy as np
import pandas as pd

from nndiag.rows import COLUMNS, LayoutCache, Rows

_MIN_CAPACITY = 1024
_GROWTH = 1.25  # when full, new arrays 1.25x the rows kept: amortised O(1) appends, <= 20% unused space


class MemoryHistory:
    """Keeps the run's first rows and its most recent ones, ``max_rows`` in all, in whole packets.

    The first packets, up to ``max_rows // 10`` rows (the start of the run, which rules compare
    against: initial loss, early gradient levels), are kept for good; beyond ``max_rows`` the oldest
    packets after them are dropped and ``complete`` becomes False. The newest packet is always kept,
    even when it alone exceeds ``max_rows``.

    Example:
        >>> import numpy as np
        >>> h = MemoryHistory(max_rows=20)
        >>> for k in range(12):
        ...     h.write_rows(Rows(np.array([k, k]), ["", "fc"], ["loss", "act_std"], np.array([1.0, 2.0])))
        >>> sorted(set(h.frame().step)), h.complete
        ([0, 3, 4, 5, 6, 7, 8, 9, 10, 11], False)

    """

    def __init__(self, max_rows: int = 1_000_000) -> None:
        self.max_rows = max_rows
        self.head_rows = max_rows // 10
        self._head: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # pinned first packets, once split
        self._head_packets = 0  # packets that fit in head_rows (counted until the first drop)
        self._head_size = 0
        self.complete = True
        self._lock = threading.Lock()
        self._keys: list[tuple[str, str]] = []  # code -> (layer, stat)
        self._codes: dict[tuple[str, str], int] = {}
        self._layouts: LayoutCache[np.ndarray] = LayoutCache()  # a packet layout's codes
        self._step = np.empty(0, dtype=np.int64)
        self._value = np.empty(0, dtype=np.float64)
        self._key = np.empty(0, dtype=np.int32)
        self._start = 0  # the window is [_start, _end) of the arrays
        self._end = 0
        self._sizes: deque[int] = deque()  # rows of each kept packet, oldest first

    @property
    def rows(self) -> int:
        """Rows currently kept in memory."""
        return self._end - self._start + (len(self._head[0]) if self._head is not None else 0)

    @property
    def nbytes(self) -> int:
        """Bytes held by the column arrays (capacity included), for memory accounting."""
        head = sum(a.nbytes for a in self._head) if self._head is not None else 0
        return self._step.nbytes + self._value.nbytes + self._key.nbytes + head

    def _code(self, layer: str, stat: str) -> int:
        key = (layer, stat)
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = len(self._keys)
            self._keys.append(key)
        return code

    def _codes_of(self, rows: Rows) -> np.ndarray:
        pairs = zip(rows.layers, rows.stats, strict=True)
        return np.fromiter((self._code(layer, stat) for layer, stat in pairs), np.int32, len(rows))

    def _reserve(self, n: int) -> None:
        """Room for ``n`` more rows at ``_end``: new arrays 1.25x the window plus ``n``, the window at the front."""
        if self._end + n <= len(self._step):
            return
        live = self._end - self._start
        capacity = max(_MIN_CAPACITY, int((live + n) * _GROWTH))
        s, e = self._start, self._end
        step = np.empty(capacity, dtype=np.int64)
        value = np.empty(capacity, dtype=np.float64)
        key = np.empty(capacity, dtype=np.int32)
        step[:live], value[:live], key[:live] = self._step[s:e], self._value[s:e], self._key[s:e]
        self._step, self._value, self._key = step, value, key
        self._start, self._end = 0, live

    def write_rows(self, rows: Rows) -> None:
        """Append one packet's rows, dropping the oldest packets beyond ``max_rows``."""
        n = len(rows)
        if not n:
            return
        with self._lock:
            codes = self._layouts.get(rows, self._codes_of)
            self._reserve(n)
            e = self._end
            self._step[e : e + n] = rows.step
            self._value[e : e + n] = rows.value
            self._key[e : e + n] = codes
            self._end = e + n
            self._sizes.append(n)
            if (
                self._head is None
                and self._head_size + n <= self.head_rows
                and len(self._sizes) == self._head_packets + 1
            ):
                self._head_packets += 1
                self._head_size += n
            if self.rows > self.max_rows:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Pin the run's first packets (once), then drop the oldest of the others until within ``max_rows``."""
        if self._head is None:
            s, h = self._start, self._start + self._head_size
            self._head = (self._step[s:h].copy(), self._value[s:h].copy(), self._key[s:h].copy())
            self._start = h
            for _ in range(self._head_packets):
                self._sizes.popleft()
        budget = self.max_rows - len(self._head[0])
        while self._end - self._start > budget and len(self._sizes) > 1:
            self._start += self._sizes.popleft()
            self.complete = False

    def frame(self) -> pd.DataFrame:
        """All kept rows as a long-format DataFrame, sorted by step (stable)."""
        with self._lock:
            s, e = self._start, self._end
            head = self._head if self._head is not None else (self._step[:0], self._value[:0], self._key[:0])
            step = np.concatenate([head[0], self._step[s:e]])
            value = np.concatenate([head[1], self._value[s:e]])
            key = np.concatenate([head[2], self._key[s:e]])
            keys = list(self._keys)
        if not len(step):
            return pd.DataFrame(
                {c: pd.Series(dtype=t) for c, t in zip(COLUMNS, ["int64", "object", "object", "float64"], strict=True)}
            )
        if len(step) > 1 and not bool((step[1:] >= step[:-1]).all()):
            order = np.argsort(step, kind="stable")
            step, value, key = step[order], value[order], key[order]
        layers = np.empty(len(keys), dtype=object)
        stats = np.empty(len(keys), dtype=object)
        layers[:] = [k[0] for k in keys]
        stats[:] = [k[1] for k in keys]
        return pd.DataFrame({"step": step, "layer": layers[key], "stat": stats[key], "value": value})
