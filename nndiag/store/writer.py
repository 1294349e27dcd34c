"""Incremental, crash-safe writes to the SQLite run store.

The store is written only from nndiag's background thread. WAL journaling makes every
commit durable against a crash or ``kill -9`` of the training process (``synchronous=NORMAL``
may lose the last commits only on an OS crash or power loss). Rows are buffered and
committed every ``flush_seconds`` (see :class:`~nndiag.config.RecorderConfig`).

Example:
    >>> import tempfile, numpy as np
    >>> from nndiag.rows import Rows
    >>> from nndiag.store.writer import RunStore
    >>> from nndiag.store.reader import load_run
    >>> d = tempfile.mkdtemp()
    >>> store = RunStore(d)
    >>> store.write_rows(Rows(np.array([0]), [""], ["loss"], np.array([2.3])))
    >>> store.close()
    >>> load_run(d).history.value.tolist()
    [2.3]
    >>> import os; sorted(os.listdir(d))  # no -wal / -shm left after a normal close
    ['nndiag.sqlite']

"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from nndiag._version import __version__
from nndiag.diagnosis import Diagnosis
from nndiag.rows import LayoutCache, Rows
from nndiag.store.schema import DDL, SCHEMA_VERSION, STORE_FILENAME


class RunStore:
    """Append-only writer of one run's statistics, facts and diagnoses."""

    def __init__(self, run_dir: str | Path, meta: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / STORE_FILENAME
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(DDL)
        self._series: dict[tuple[str, str], int] = {
            (layer, stat): sid for sid, layer, stat in self._conn.execute("SELECT id, layer, stat FROM series")
        }
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (steps, series ids, values) per Rows
        self._layouts: LayoutCache[np.ndarray] = LayoutCache()  # a packet layout's series ids
        self._conn.execute("BEGIN")
        if self._get_meta("schema_version") is None:
            self._set_meta("schema_version", SCHEMA_VERSION)
            self._set_meta("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self._set_meta("nndiag_version", __version__)
        self._set_meta("status", "running")
        for k, v in (meta or {}).items():
            self._set_meta(k, v)
        self._conn.execute("COMMIT")

    def _get_meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _set_meta(self, key: str, value: Any) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value, default=str)),
        )

    def _series_id(self, layer: str, stat: str) -> int:
        sid = self._series.get((layer, stat))
        if sid is None:
            cur = self._conn.execute("INSERT INTO series (layer, stat) VALUES (?, ?)", (layer, stat))
            sid = int(cur.lastrowid)  # type: ignore[arg-type]
            self._series[(layer, stat)] = sid
        return sid

    def write_rows(self, rows: Rows) -> None:
        """Buffer rows; they reach the disk at the next :meth:`flush`."""
        if len(rows):
            sids = self._layouts.get(rows, self._series_ids)
            self._pending.append((np.array(rows.step, dtype=np.int64), sids, np.array(rows.value, dtype=np.float64)))

    def _series_ids(self, rows: Rows) -> np.ndarray:
        pairs = zip(rows.layers, rows.stats, strict=True)
        return np.fromiter((self._series_id_later(layer, stat) for layer, stat in pairs), np.int64, len(rows))

    def _series_id_later(self, layer: str, stat: str) -> int:
        sid = self._series.get((layer, stat))
        if sid is not None:
            return sid
        self._conn.execute("BEGIN")
        try:
            sid = self._series_id(layer, stat)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            self._series.pop((layer, stat), None)
            raise
        return sid

    def write_meta(self, key: str, value: Any) -> None:
        """Set one meta entry (committed immediately)."""
        self._conn.execute("BEGIN")
        self._set_meta(key, value)
        self._conn.execute("COMMIT")

    def write_diagnoses(self, diagnoses: list[Diagnosis]) -> None:
        """Insert or update diagnoses, one row per (code, layer) (committed immediately)."""
        self._conn.execute("BEGIN")
        self._conn.executemany(
            "INSERT INTO diagnoses (code, layer_key, step, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(code, layer_key) DO UPDATE SET step = excluded.step, data = excluded.data",
            [(d.code, d.layer or "", d.step, json.dumps(d.to_dict(), default=_json_default)) for d in diagnoses],
        )
        self._conn.execute("COMMIT")

    def truncate_from(self, step: int) -> int:
        """Delete the rows of steps >= ``step`` (a resumed run redoes them); returns how many went.

        Diagnoses are kept: the advisor updates or resolves them as the resumed run goes on.
        """
        self.flush()
        self._conn.execute("BEGIN")
        gone = self._conn.execute("DELETE FROM scalars WHERE step >= ?", (int(step),)).rowcount
        self._conn.execute("COMMIT")
        return int(gone)

    def flush(self) -> None:
        """Commit buffered rows in one transaction."""
        if not self._pending:
            return
        chunks, self._pending = self._pending, []
        steps, sids, values = (np.concatenate(c) for c in zip(*chunks, strict=True))
        cells = values.astype(object)
        cells[np.isnan(values)] = None  # NaN is stored as NULL
        rows = zip(steps.tolist(), sids.tolist(), cells.tolist(), strict=True)
        self._conn.execute("BEGIN")
        self._conn.executemany("INSERT INTO scalars (step, series, value) VALUES (?, ?, ?)", rows)
        self._conn.execute("COMMIT")

    def close(self, status: str = "finished") -> None:
        """Flush, record the final status and close the connection.

        The journal goes back from WAL to a plain rollback journal: the WAL is checkpointed into the
        database and the ``-wal``/``-shm`` files are removed, so a finished run is one file that a
        read-only reader opens as it is. (A killed run keeps them; it loads all the same.)
        """
        try:
            self.flush()
            self.write_meta("status", status)
            with contextlib.suppress(sqlite3.Error):  # a reader holding the database open: WAL stays
                self._conn.execute("PRAGMA journal_mode=DELETE").fetchone()
        finally:
            self._conn.close()


def _json_default(obj: Any) -> Any:
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)
