"""Comparing runs: which problems appear or disappear against the first run (the baseline).

A problem is a (code, layer) pair that is *open* at the end of a run; resolved diagnoses are
shown but do not count as present.

Example:
    >>> from nndiag import Diagnosis
    >>> a = [Diagnosis("dead_units", "warning", 0, "fc1", "..."), Diagnosis("lr_too_low", "warning", 9, None, "...")]
    >>> b = [Diagnosis("dead_units", "warning", 0, "fc1", "...")]
    >>> c = changes(a, b)
    >>> c["appeared"], c["disappeared"], c["persisting"]
    ([], ['lr_too_low'], ['dead_units [fc1]'])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nndiag.advisor import SEVERITY_ORDER
from nndiag.diagnosis import Diagnosis
from nndiag.report.model import RunReport

Key = tuple[str, str]


def key_text(key: Key) -> str:
    """``code [layer]`` (or just ``code`` for run-wide problems)."""
    return f"{key[0]} [{key[1]}]" if key[1] else key[0]


def open_keys(diagnoses: list[Diagnosis]) -> list[Key]:
    """(code, layer) of the open diagnoses, in the given order."""
    return [(d.code, d.layer or "") for d in diagnoses if not d.resolved]


def changes(baseline: list[Diagnosis], other: list[Diagnosis]) -> dict[str, list[str]]:
    """Problems that appeared in ``other``, disappeared from the baseline, or persist in both."""
    base, new = open_keys(baseline), open_keys(other)
    return {
        "appeared": [key_text(k) for k in new if k not in base],
        "disappeared": [key_text(k) for k in base if k not in new],
        "persisting": [key_text(k) for k in new if k in base],
    }


@dataclass(frozen=True)
class Comparison:
    """Several runs side by side; ``runs[0]`` is the baseline."""

    runs: list[RunReport]

    def keys(self) -> list[Key]:
        """Every (code, layer) any run diagnosed, most severe first, in first-seen order."""
        seen: dict[Key, int] = {}
        for r in self.runs:
            for d in r.diagnoses:
                k = (d.code, d.layer or "")
                rank = SEVERITY_ORDER[d.severity]
                seen[k] = min(seen.get(k, rank), rank)
        return sorted(seen, key=lambda k: seen[k])

    def cell(self, run: RunReport, key: Key) -> Diagnosis | None:
        """The run's diagnosis for ``key``, if any."""
        return next((d for d in run.diagnoses if (d.code, d.layer or "") == key), None)

    def changes(self) -> list[dict[str, Any]]:
        """For every run after the baseline: appeared / disappeared / persisting problems."""
        base = self.runs[0]
        return [{"run": str(r.path), **changes(base.diagnoses, r.diagnoses)} for r in self.runs[1:]]
