"""The one-line answer a report opens with: healthy, or problems found (and how bad).

Example:
    >>> from nndiag import Diagnosis
    >>> v = verdict([Diagnosis("dead_units", "warning", 0, "fc1", "...")], status="finished", steps=100)
    >>> v.state, v.worst, v.headline
    ('problems', 'warning', 'Problems found: 1 warning.')
    >>> verdict([], status="running", steps=40).headline
    'Healthy so far: no problems found in 40 optimizer steps (the run did not finish: status running).'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from nndiag.advisor import SEVERITY_ORDER
from nndiag.diagnosis import Diagnosis

State = Literal["healthy", "problems", "empty"]


@dataclass(frozen=True)
class Verdict:
    """The verdict on one run.

    Attributes:
        state: ``"problems"`` when an open diagnosis is a warning or an error, ``"healthy"``
            otherwise (info-level advice and resolved problems do not change it), ``"empty"``
            when the run recorded nothing.
        worst: the most severe open severity, or ``None``.
        complete: the run finished cleanly (status ``finished``).
        status: the run's stored status (finished / failed / interrupted / exited / running).
        headline: one sentence for people.
        counts: open diagnoses per severity.

    """

    state: State
    worst: str | None
    complete: bool
    status: str
    headline: str
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def verdict(diagnoses: list[Diagnosis], status: str, steps: int) -> Verdict:
    """The verdict from a run's diagnoses, its stored status and its optimizer-step count."""
    open_ = [d for d in diagnoses if not d.resolved]
    counts = {sev: sum(d.severity == sev for d in open_) for sev in ("error", "warning", "info")}
    worst = min((d.severity for d in open_), key=SEVERITY_ORDER.__getitem__, default=None)
    complete = status == "finished"
    unfinished = "" if complete else f" (the run did not finish: status {status})"
    if steps == 0:
        return Verdict("empty", worst, complete, status, f"No training steps were recorded{unfinished}.", counts)
    if counts["error"] or counts["warning"]:
        parts = [f"{n} {sev}{'s' if n > 1 else ''}" for sev, n in counts.items() if n and sev != "info"]
        text = f"Problems found: {', '.join(parts)}{unfinished}."
        return Verdict("problems", worst, complete, status, text, counts)
    lead = "Healthy" if complete else "Healthy so far"
    advice = f"; {counts['info']} piece{'s' if counts['info'] > 1 else ''} of advice" if counts["info"] else ""
    text = f"{lead}: no problems found in {steps} optimizer steps{advice}{unfinished}."
    return Verdict("healthy", worst, complete, status, text, counts)
