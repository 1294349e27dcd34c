"""Reading a run store back: :func:`load_run`.

Loading never unpickles anything and never modifies the run; it works on finished
runs and on runs that were killed mid-way (everything up to the last commit loads).

Example:
    >>> from nndiag import load_run
    >>> load_run("/nonexistent")
    Traceback (most recent call last):
    ...
    nndiag.store.reader.RunNotFoundError: /nonexistent does not exist; pass the log directory of a run ...

"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from nndiag.diagnosis import Diagnosis
from nndiag.rows import COLUMNS
from nndiag.store.schema import SCHEMA_VERSION, STORE_FILENAME


class RunNotFoundError(FileNotFoundError):
    """The path is not an nndiag run (or holds several); the message says what to pass instead."""


class CorruptRunError(RuntimeError):
    """The run store exists but cannot be read."""


@dataclass(frozen=True)
class LoadedRun:
    """A run read back from its store. Unpacks as ``history, diagnoses = load_run(...)``.

    Attributes:
        history: long-format DataFrame with columns step, layer, stat, value.
        diagnoses: the run's diagnoses.
        facts: model facts (layers, parameters, optimizers, batch size, ...).
        meta: store metadata (status, versions, framework, config).
        path: the store file.

    """

    history: pd.DataFrame
    diagnoses: list[Diagnosis]
    facts: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.history, self.diagnoses))


def find_store(path: str | Path) -> Path:
    """Locate the store file for ``path`` (a store file, a run dir, or a dir with exactly one run)."""
    p = Path(path)
    if not p.exists():
        raise RunNotFoundError(
            f"{p} does not exist; pass the log directory of a run recorded by nndiag "
            f"(the folder holding {STORE_FILENAME})."
        )
    if p.is_file():
        return p
    direct = p / STORE_FILENAME
    if direct.is_file():
        return direct
    found = sorted(q.parent for q in p.glob(f"**/{STORE_FILENAME}"))
    if len(found) == 1:
        return found[0] / STORE_FILENAME
    if not found:
        raise RunNotFoundError(
            f"{p} holds no nndiag run ({STORE_FILENAME} not found under it); pass the run's log directory, "
            "e.g. runs/lightning_logs/version_0."
        )
    listing = ", ".join(str(f) for f in found[:10]) + (" ..." if len(found) > 10 else "")
    raise RunNotFoundError(f"{p} holds {len(found)} nndiag runs; pass one of them: {listing}")


def _readonly_uri(path: Path) -> str:
    """An SQLite URI opening ``path`` read-only; ``?``, ``#`` and ``%`` in folder names are percent-encoded.

    Unquoted, a folder named ``x?mode=rwc`` would turn the rest of the path into URI parameters and open
    (or create) a different file read-write.

    Example:
        >>> _readonly_uri(Path("/runs/a?mode=rwc#/nndiag.sqlite"))
        'file:/runs/a%3Fmode%3Drwc%23/nndiag.sqlite?mode=ro'
    """
    return f"file:{quote(str(path.absolute()), safe='/')}?mode=ro"


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(_readonly_uri(path), uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.Error:
        # a read-only open of a WAL database needs its -shm file; fall back to a normal open
        try:
            conn = sqlite3.connect(path)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as exc:
            raise CorruptRunError(f"{path} is not a readable nndiag run store ({exc}).") from exc


def load_run(path: str | Path, max_steps: int | None = None) -> LoadedRun:
    """Read a finished or killed run back.

    Args:
        path: the run's log directory (``runs/lightning_logs/version_0``), its
            ``nndiag.sqlite``, or a folder holding exactly one run.
        max_steps: thin the per-layer series to at most this many logging steps, evenly
            spaced, first and last included (run-wide series such as ``loss`` stay whole).
            Reports of long runs use it: 200 layers x 10,000 logging steps load in about a
            second instead of reading every one of 16 million rows.

    Returns:
        A :class:`LoadedRun`; ``history, diagnoses = load_run(path)`` unpacks it.

    Raises:
        RunNotFoundError: no run (or several runs) at ``path``.
        CorruptRunError: the store cannot be read.

    """
    store = find_store(path)
    conn = _connect(store)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "series", "scalars"} <= tables:
            raise CorruptRunError(f"{store} is an SQLite file but not an nndiag run store (tables missing).")
        meta = {k: _json(store, f"meta {k!r}", v) for k, v in conn.execute("SELECT key, value FROM meta")}
        version = meta.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise CorruptRunError(
                f"{store} was written by a newer nndiag (store schema {version}, this nndiag reads up to "
                f"{SCHEMA_VERSION}); upgrade nndiag to read it."
            )
        history = _read_history(conn, max_steps)
        history = history.astype({"step": "int64", "value": "float64"})[COLUMNS]
        diagnoses = []
        if "diagnoses" in tables:
            for (data,) in conn.execute("SELECT data FROM diagnoses ORDER BY step, code"):
                diagnoses.append(_diagnosis(store, data))
    except sqlite3.DatabaseError as exc:
        raise CorruptRunError(f"{store} is damaged and cannot be read ({exc}).") from exc
    finally:
        conn.close()
    facts = meta.pop("facts", {}) or {}
    for key, value in (("facts", facts), ("hparams", meta.get("hparams") or {})):
        if not isinstance(value, dict):
            raise CorruptRunError(f"{store} is damaged: its {key} are a {type(value).__name__}, not a mapping.")
    return LoadedRun(history=history, diagnoses=diagnoses, facts=facts, meta=meta, path=store)


def _json(store: Path, what: str, text: Any) -> Any:
    """JSON text read from the store (never anything that executes code: no pickle, no eval)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise CorruptRunError(f"{store} is damaged: {what} is not JSON ({exc}).") from exc


_DIAGNOSIS_TYPES: dict[str, tuple[type, ...]] = {
    "code": (str,),
    "step": (int,),
    "layer": (str, type(None)),
    "message": (str,),
    "evidence": (dict,),
    "suggestions": (list,),
    "last_step": (int, type(None)),
    "count": (int,),
    "resolved": (bool,),
}


def _diagnosis(store: Path, text: Any) -> Diagnosis:
    """One stored diagnosis, its fields type-checked (a crafted store must not break the renderers)."""
    data = _json(store, "a diagnosis", text)
    try:
        if not isinstance(data, dict):
            raise TypeError(f"a {type(data).__name__}, not an object")
        diagnosis = Diagnosis.from_dict(data)
        for name, types in _DIAGNOSIS_TYPES.items():
            value = getattr(diagnosis, name)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise TypeError(f"{name} is {value!r}")
        if not all(isinstance(x, str) for x in diagnosis.suggestions):
            raise TypeError("a suggestion is not text")
    except (TypeError, ValueError) as exc:
        raise CorruptRunError(f"{store} is damaged: a stored diagnosis cannot be read ({exc}).") from exc
    return diagnosis


_SELECT = (
    "SELECT s.step AS step, r.layer AS layer, r.stat AS stat, s.value AS value "
    "FROM scalars s JOIN series r ON s.series = r.id"
)


def _read_history(conn: sqlite3.Connection, max_steps: int | None) -> pd.DataFrame:
    if max_steps is None:
        return pd.read_sql_query(f"{_SELECT} ORDER BY s.step, s.rowid", conn)
    if max_steps < 2:
        raise ValueError(f"max_steps must be at least 2 (first and last logging step), got {max_steps}.")
    steps = _logging_steps(conn)
    if len(steps) > max_steps:
        keep = sorted({steps[round(i * (len(steps) - 1) / (max_steps - 1))] for i in range(max_steps)})
    else:
        keep = steps
    conn.execute("PRAGMA mmap_size=4294967296")  # reads through the page cache: half the time of read() calls
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS keep_steps (step INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM keep_steps")
    conn.executemany("INSERT INTO keep_steps (step) VALUES (?)", [(k,) for k in keep])
    series = pd.read_sql_query("SELECT id, layer, stat FROM series", conn).set_index("id")
    # per-layer series at the kept steps (lookups in the (series, step) index), run-wide series whole
    rows = conn.execute(
        "SELECT step, series, value FROM scalars WHERE series IN (SELECT id FROM series WHERE layer != '') "
        "AND step IN (SELECT step FROM keep_steps) "
        "UNION ALL SELECT step, series, value FROM scalars WHERE series IN (SELECT id FROM series WHERE layer = '')"
    ).fetchall()
    frame = pd.DataFrame(rows, columns=["step", "series", "value"])
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")  # NULL (stored NaN) -> NaN
    frame["layer"] = series["layer"].reindex(frame["series"]).to_numpy()
    frame["stat"] = series["stat"].reindex(frame["series"]).to_numpy()
    return frame.sort_values("step", kind="stable").reset_index(drop=True)[COLUMNS]


def _logging_steps(conn: sqlite3.Connection) -> list[int]:
    """Steps at which per-layer statistics were recorded, read through the (series, step) index."""
    ids = [
        sid
        for (sid,) in conn.execute(
            "SELECT id FROM series WHERE (layer = '' AND stat = 'grad_norm_total') OR (layer = 'input' AND "
            "stat = 'act_std')"
        )
    ]
    if not ids:  # no gradients or input statistics recorded: every step that has any per-layer row
        ids = [sid for (sid,) in conn.execute("SELECT id FROM series WHERE layer != ''")]
    marks = ",".join("?" * len(ids))
    query = f"SELECT DISTINCT step FROM scalars WHERE series IN ({marks}) ORDER BY step"
    return [int(step) for (step,) in conn.execute(query, ids)]
