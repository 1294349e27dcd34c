"""The machine-readable report (see :mod:`nndiag.report.schema`): one run or a comparison.

Non-finite numbers become ``null``, so any strict JSON parser reads it.

Example:
    >>> import tempfile, numpy as np
    >>> from nndiag.rows import Rows
    >>> from nndiag.store.writer import RunStore
    >>> from nndiag.report.model import build_report
    >>> d = tempfile.mkdtemp()
    >>> s = RunStore(d); s.write_rows(Rows(np.array([0, 1]), ["", ""], ["loss"] * 2, np.array([2.3, 2.1]))); s.close()
    >>> doc = run_document(build_report(d))
    >>> doc["verdict"]["state"], doc["overview"]["loss_last"]
    ('healthy', 2.1)
"""

from __future__ import annotations

import math
import time
from typing import Any

import pandas as pd

from nndiag._version import __version__
from nndiag.jsonable import clean
from nndiag.report.compare import Comparison
from nndiag.report.model import RunReport
from nndiag.report.schema import REPORT_SCHEMA_VERSION


def _value(x: Any) -> float | None:
    return None if x is None or pd.isna(x) or not math.isfinite(float(x)) else float(x)


def _layers(report: RunReport) -> list[dict[str, Any]]:
    table = report.layers
    out = []
    stats = sorted({c.rsplit(" ", 1)[0] for c in table.columns}, key=lambda s: list(table.columns).index(f"{s} first"))
    for name, row in table.iterrows():
        entries = {s: {"first": _value(row[f"{s} first"]), "last": _value(row[f"{s} last"])} for s in stats}
        entries = {s: v for s, v in entries.items() if v["first"] is not None or v["last"] is not None}
        out.append({"name": str(name), "kind": report.layer_kind(str(name)), "stats": entries})
    return out


def run_document(report: RunReport) -> dict[str, Any]:
    """The JSON document of one run (validates against ``REPORT_SCHEMA``)."""
    meta = report.meta
    doc = {
        "schema": "nndiag.report",
        "schema_version": REPORT_SCHEMA_VERSION,
        "nndiag_version": __version__,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": {
            "path": str(report.path),
            "name": report.name,
            "status": report.verdict.status,
            "created": meta.get("created"),
            "framework": meta.get("framework"),
            "model_class": report.facts.model_class,
            "hparams": meta.get("hparams") or {},
        },
        "verdict": report.verdict.to_dict(),
        "overview": report.overview,
        "diagnoses": [d.to_dict() for d in report.diagnoses],
        "layers": _layers(report),
    }
    cleaned: dict[str, Any] = clean(doc)
    return cleaned


def comparison_document(comparison: Comparison) -> dict[str, Any]:
    """The JSON document of a comparison (validates against ``COMPARISON_SCHEMA``)."""
    return {
        "schema": "nndiag.comparison",
        "schema_version": REPORT_SCHEMA_VERSION,
        "nndiag_version": __version__,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": [run_document(r) for r in comparison.runs],
        "changes": comparison.changes(),
    }
