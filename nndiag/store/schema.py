"""SQLite schema of the run store (``nndiag.sqlite`` in the run's log directory).

Tables:

* ``meta(key, value)``: JSON values: ``schema_version``, ``nndiag_version``, ``created``,
  ``status`` (running / finished / failed), ``framework``, ``config``, ``facts``.
* ``series(id, layer, stat)``: one row per recorded (layer, stat) pair.
* ``scalars(step, series, value)``: the long-format history; NaN is stored as NULL.
* ``diagnoses(code, layer_key, step, data)``: one row per (code, layer), ``data`` is the
  JSON of a :class:`~nndiag.Diagnosis`, updated in place while a problem persists.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
STORE_FILENAME = "nndiag.sqlite"

DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, layer TEXT NOT NULL, stat TEXT NOT NULL, UNIQUE (layer, stat)
);
CREATE TABLE IF NOT EXISTS scalars (step INTEGER NOT NULL, series INTEGER NOT NULL, value REAL);
CREATE INDEX IF NOT EXISTS scalars_series_step ON scalars (series, step);
CREATE TABLE IF NOT EXISTS diagnoses (
    code TEXT NOT NULL, layer_key TEXT NOT NULL, step INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (code, layer_key)
);
"""
