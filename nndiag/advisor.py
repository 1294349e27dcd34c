"""The Advisor: runs the rules and keeps one de-duplicated diagnosis per (code, layer).

A problem that persists is one :class:`~nndiag.Diagnosis` whose ``last_step`` and ``count``
are updated at every check where it still holds; a problem that stops holding is marked
``resolved``; one that comes back is re-opened. Symptoms explained by a more specific cause
are suppressed (see :data:`EXPLAINED_BY`).

Example:
    >>> import pandas as pd
    >>> from nndiag.advisor import Advisor
    >>> from nndiag.rules.view import RunView
    >>> h = pd.DataFrame({"step": [0, 1], "layer": ["", ""], "stat": ["loss", "loss"],
    ...                   "value": [2.3, float("nan")]})
    >>> adv = Advisor()
    >>> [d.code for d in adv.check(RunView(h))]
    ['nonfinite_loss']
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import pandas as pd

import nndiag.rules  # noqa: F401  (registers the rule families)
from nndiag.diagnosis import Diagnosis
from nndiag.guard import ErrorGuard
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import RULES, Rule, broken_codes, cause_order, explained_by
from nndiag.rules.view import RunView

# Derived from the rule registry (each rule declares its rank, what explains it, whether it means "broken").
# A symptom code is not reported while one of its causes holds (the cause names the fix).
EXPLAINED_BY: dict[str, tuple[str, ...]] = explained_by()

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}

# Within one severity, root causes come before the mechanisms they set off, and those before
# the symptoms on the loss curve: the first diagnosis of a run names the cause to fix first.
CAUSE_ORDER: tuple[str, ...] = cause_order()

# The codes that mean "this run is broken" (the Optuna pruner and the sweep treat such runs as failed).
BROKEN_CODES: tuple[str, ...] = broken_codes()
_CAUSE_RANK = {code: i for i, code in enumerate(CAUSE_ORDER)}


def _is_record(code: str) -> bool:
    spec = RULES.get(code)
    return spec is not None and spec.record


def fails(diagnoses: Iterable[Diagnosis], level: str | None) -> bool:
    """Whether an open (unresolved) diagnosis is at least as severe as ``level`` (``--fail-on``).

    Example:
        >>> d = Diagnosis("dead_units", "warning", 0, "fc", "...")
        >>> fails([d], "warning"), fails([d], "error"), fails([d], None)
        (True, False, False)
    """
    if level is None:
        return False
    return any(SEVERITY_ORDER[d.severity] <= SEVERITY_ORDER[level] for d in diagnoses if not d.resolved)


def by_severity(diagnoses: Iterable[Diagnosis]) -> list[Diagnosis]:
    """Open before resolved; errors, then warnings, then info; causes before symptoms; then by step.

    The first entry is nndiag's answer to "what is wrong with this run, and what do I fix first".
    """
    return sorted(
        diagnoses,
        key=lambda d: (
            d.resolved,
            SEVERITY_ORDER[d.severity],
            _CAUSE_RANK.get(d.code, len(_CAUSE_RANK)),
            d.step,
            d.layer or "",
        ),
    )


class Advisor:
    """Evaluates rules over a :class:`RunView` and tracks diagnoses across checks."""

    def __init__(
        self,
        config: AdvisorConfig | None = None,
        rules: Iterable[Rule] | None = None,
        guard: ErrorGuard | None = None,
    ) -> None:
        self.config = config or AdvisorConfig()
        self.rules = list(RULES.values()) if rules is None else list(rules)
        self.guard = guard or ErrorGuard()
        self.diagnoses: list[Diagnosis] = []  # in order of first detection; entries replaced in place
        self._index: dict[tuple[str, str | None], int] = {}
        self._lock = threading.Lock()
        # called between two rules: the live loop yields the interpreter to the training thread there
        self.pause: Callable[[], None] | None = None

    def evaluate(self, view: RunView) -> dict[tuple[str, str | None], Diagnosis]:
        """What holds now, by (code, layer), after suppressing explained symptoms."""
        found: dict[tuple[str, str | None], Diagnosis] = {}
        for r in self.rules:
            if r.record or not r.applies(view):
                continue
            if self.pause is not None:
                self.pause()
            for d in self.guard.run(f"rule {r.code}", r.fn, view, self.config.thresholds(r.thresholds)) or []:
                if d.code != r.code or d.severity not in r.severities:
                    self.guard.report(
                        f"rule {r.code}",
                        ValueError(
                            f"rule {r.code} emitted {d.code} at {d.severity}; it owns {r.code} at {r.severities}"
                        ),
                    )
                    continue
                key = (d.code, d.layer)
                if key not in found or SEVERITY_ORDER[d.severity] < SEVERITY_ORDER[found[key].severity]:
                    found[key] = d
        codes = {code for code, _ in found}
        return {k: d for k, d in found.items() if not set(EXPLAINED_BY.get(k[0], ())) & codes}

    def check(self, view: RunView) -> list[Diagnosis]:
        """Run the rules once; return the diagnoses that are new, updated or resolved by this check."""
        now = self.evaluate(view)
        changed: list[Diagnosis] = []
        with self._lock:
            for key, d in now.items():
                i = self._index.get(key)
                if i is None:
                    new = replace(d, last_step=view.last_step, count=1, resolved=False)
                    self._index[key] = len(self.diagnoses)
                    self.diagnoses.append(new)
                else:
                    old = self.diagnoses[i]
                    first = d.step if old.resolved else old.step
                    new = replace(
                        d, step=min(first, d.step), last_step=view.last_step, count=old.count + 1, resolved=False
                    )
                    self.diagnoses[i] = new
                changed.append(new)
            for key, i in self._index.items():
                old = self.diagnoses[i]
                if key not in now and not old.resolved and not _is_record(old.code):
                    self.diagnoses[i] = replace(old, resolved=True)
                    changed.append(self.diagnoses[i])
        return changed

    def restore(self, diagnoses: Iterable[Diagnosis]) -> None:
        """Seed the tracked diagnoses (a resumed run's open ones); later checks update or resolve them.

        Example:
            >>> adv = Advisor(rules=[])
            >>> adv.restore([Diagnosis("dead_units", "warning", 3, "fc", "...")])
            >>> [d.headline() for d in adv.diagnoses]
            ['dead_units [fc] at step 3']
        """
        with self._lock:
            for d in diagnoses:
                key = (d.code, d.layer)
                if key in self._index:
                    continue
                self._index[key] = len(self.diagnoses)
                self.diagnoses.append(d)

    def record(self, diagnosis: Diagnosis) -> None:
        """Add or replace (by code and layer) a diagnosis that nndiag itself made (a ``record`` code).

        Example:
            >>> adv = Advisor(rules=[])
            >>> adv.record(Diagnosis("remedied", "info", 9, None, "rolled back")); len(adv.diagnoses)
            1
        """
        with self._lock:
            key = (diagnosis.code, diagnosis.layer)
            i = self._index.get(key)
            if i is None:
                self._index[key] = len(self.diagnoses)
                self.diagnoses.append(diagnosis)
            else:
                self.diagnoses[i] = diagnosis

    def replay(self, history: pd.DataFrame, facts: dict[str, Any], checks: int = 40) -> list[Diagnosis]:
        """Diagnose a finished run as training would have: check at up to ``checks`` logging steps.

        Returns all diagnoses, most severe first (resolved ones marked).
        """
        logging_steps = sorted(history.loc[history.stat == "grad_norm_total", "step"].unique().tolist())
        if not logging_steps:
            logging_steps = sorted(history.step.unique().tolist())
        if len(logging_steps) > checks:
            idx = [round(i * (len(logging_steps) - 1) / (checks - 1)) for i in range(checks)]
            logging_steps = [logging_steps[i] for i in idx]
        for step in logging_steps[:-1]:
            self.check(RunView(history[history.step <= step], facts))
        self.check(RunView(history, facts, finished=True))
        return by_severity(self.diagnoses)
