"""Strict JSON: non-finite floats become ``null`` (strict JSON parsers reject NaN); used by the CLI, report, preflight.

Example:
    >>> dumps({"a": float("nan"), "b": [1.0, float("inf")]})
    '{"a": null, "b": [1.0, null]}'
"""

from __future__ import annotations

import json
import math
from typing import Any


def clean(obj: Any) -> Any:
    """``obj`` with NaN/Inf floats replaced by ``None`` and dict keys made strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (see :func:`clean`)."""
    return json.dumps(clean(obj), indent=indent, allow_nan=False)
