"""Small text helpers shared by the HTML and Markdown renderings.

Example:
    >>> num(0.000123456), num(float("nan")), num(None), num(12)
    ('0.000123', 'nan', 'n/a', '12')
    >>> evidence_text({"dead_frac": 0.8612, "step": 40})
    'dead_frac=0.861, step=40'
"""

from __future__ import annotations

import math
from typing import Any

from nndiag.diagnosis import Diagnosis


def num(x: Any) -> str:
    """A number with 3 significant digits; ``n/a`` for missing or non-finite values."""
    if x is None:
        return "n/a"
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(f):
        return "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")
    return f"{f:.3g}"


def evidence_text(evidence: dict[str, Any]) -> str:
    """``key=value`` pairs of a diagnosis's evidence."""
    return ", ".join(f"{k}={num(v)}" for k, v in evidence.items())


def steps_text(d: Diagnosis) -> str:
    """``step 7`` or ``steps 7-120``, plus ``resolved`` when it went away."""
    return d.span() + (", resolved" if d.resolved else "")
