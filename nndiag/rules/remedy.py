"""``remedied``: the record of what nndiag's remedy did (roll back, cool down, skip NaN/Inf batches).

Not a rule: the remedy (:mod:`nndiag.remedy`) publishes this diagnosis itself when it acts, and
the advisors never evaluate or resolve it (``record=True``). It is registered here so that the
code is known everywhere codes are (``DIAGNOSIS_CODES``, ``docs/rules.md``, the report).
"""

from __future__ import annotations

from nndiag.diagnosis import Diagnosis
from nndiag.rules.registry import NoThresholds, rule
from nndiag.rules.view import RunView


@rule(
    "remedied",
    severity="info",
    rank=390,
    record=True,
    summary="a record, not a rule: with `remedy=True` nndiag rolled back to a good state and cut the learning "
    "rate, or skipped NaN/Inf batches (what, at which step, from which good step, the new learning rate)",
)
def remedied(view: RunView, t: NoThresholds) -> list[Diagnosis]:
    """Never called (a record code): the remedy publishes these diagnoses."""
    return []


__all__ = ["remedied"]
