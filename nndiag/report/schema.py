"""JSON Schemas (draft 2020-12) of ``nndiag report --format json``: a run and a comparison.

Versioned: ``schema_version`` grows when a field changes meaning or disappears; new optional
fields may appear within a version. The same schemas are in ``docs/report-schema.json``.

Example:
    >>> REPORT_SCHEMA["properties"]["schema"]["const"], COMPARISON_SCHEMA["properties"]["schema"]["const"]
    ('nndiag.report', 'nndiag.comparison')
"""

from __future__ import annotations

from typing import Any

REPORT_SCHEMA_VERSION = 1

_NUM = {"type": ["number", "null"]}
_STR = {"type": ["string", "null"]}
_SEVERITY = {"enum": ["info", "warning", "error"]}
_STRINGS = {"type": "array", "items": {"type": "string"}}

DIAGNOSIS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "severity", "step", "layer", "message", "evidence", "suggestions", "resolved"],
    "properties": {
        "code": {"type": "string", "description": "stable diagnosis code, e.g. lr_too_high"},
        "severity": _SEVERITY,
        "step": {"type": "integer", "minimum": 0, "description": "first optimizer step (0-based) it held"},
        "last_step": {"type": ["integer", "null"]},
        "count": {"type": "integer", "minimum": 1},
        "layer": {**_STR, "description": "module or parameter name; null for run-wide problems"},
        "message": {"type": "string"},
        "evidence": {"type": "object", "additionalProperties": _NUM},
        "suggestions": {"type": "array", "items": {"type": "string"}},
        "resolved": {"type": "boolean"},
    },
}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "nndiag.report.v1",
    "title": "nndiag report of one run",
    "type": "object",
    "required": ["schema", "schema_version", "run", "verdict", "overview", "diagnoses", "layers"],
    "properties": {
        "schema": {"const": "nndiag.report"},
        "schema_version": {"const": REPORT_SCHEMA_VERSION},
        "nndiag_version": {"type": "string"},
        "generated": {"type": "string", "description": "local time, ISO 8601"},
        "run": {
            "type": "object",
            "required": ["path", "name", "status"],
            "properties": {
                "path": {"type": "string"},
                "name": {"type": "string"},
                "status": {"type": "string", "description": "finished, failed, interrupted, exited or running"},
                "created": _STR,
                "framework": _STR,
                "model_class": _STR,
                "hparams": {"type": "object"},
            },
        },
        "verdict": {
            "type": "object",
            "required": ["state", "worst", "complete", "status", "headline", "counts"],
            "properties": {
                "state": {"enum": ["healthy", "problems", "empty"]},
                "worst": {"anyOf": [_SEVERITY, {"type": "null"}]},
                "complete": {"type": "boolean", "description": "the run finished cleanly"},
                "status": {"type": "string"},
                "headline": {"type": "string"},
                "counts": {
                    "type": "object",
                    "required": ["error", "warning", "info"],
                    "additionalProperties": {"type": "integer", "minimum": 0},
                },
            },
        },
        "overview": {
            "type": "object",
            "required": ["optimizer_steps", "logging_steps", "layers", "loss_first", "loss_last"],
            "properties": {
                "optimizer_steps": {"type": "integer", "minimum": 0},
                "logging_steps": {"type": "integer", "minimum": 0},
                "layers": {"type": "integer", "minimum": 0},
                "parameters": {"type": "integer", "minimum": 0},
                "loss_first": _NUM,
                "loss_last": _NUM,
                "loss_min": _NUM,
                "first_nonfinite_loss_step": {"type": ["integer", "null"]},
                "val_loss_last": _NUM,
                "val_loss_min": _NUM,
                "task": {
                    "type": ["object", "null"],
                    "description": "what the run asked the network to do (null: not recorded)",
                    "properties": {
                        "loss": {"type": "string"},
                        "output_activation": {"type": ["string", "null"]},
                        "targets": {"type": ["string", "null"]},
                        "baseline_loss": _NUM,
                    },
                },
            },
        },
        "diagnoses": {"type": "array", "items": DIAGNOSIS_SCHEMA, "description": "most severe, root causes first"},
        "layers": {
            "type": "array",
            "description": "per layer / parameter in forward order: first and last recorded value",
            "items": {
                "type": "object",
                "required": ["name", "kind", "stats"],
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"type": "string"},
                    "stats": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["first", "last"],
                            "properties": {"first": _NUM, "last": _NUM},
                        },
                    },
                },
            },
        },
    },
}

COMPARISON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "nndiag.comparison.v1",
    "title": "nndiag comparison of several runs (runs[0] is the baseline)",
    "type": "object",
    "required": ["schema", "schema_version", "runs", "changes"],
    "properties": {
        "schema": {"const": "nndiag.comparison"},
        "schema_version": {"const": REPORT_SCHEMA_VERSION},
        "nndiag_version": {"type": "string"},
        "generated": {"type": "string"},
        "runs": {"type": "array", "minItems": 2, "items": REPORT_SCHEMA},
        "changes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["run", "appeared", "disappeared", "persisting"],
                "properties": {
                    "run": {"type": "string"},
                    **{
                        k: {"type": "array", "items": {"type": "string"}}
                        for k in ("appeared", "disappeared", "persisting")
                    },
                },
            },
        },
    },
}
