"""Rule registry: each rule is a pure function ``(RunView, AdvisorConfig) -> list[Diagnosis]``.

A rule declares the statistics it needs; when they are absent from a run the rule is skipped
quietly. Rules live one family per module (``nndiag/rules/loss.py``, ``gradients.py``, ...) and
register themselves with :func:`rule`.

Each returned :class:`~nndiag.Diagnosis` describes the problem *as it holds at the end of the
view*: ``step`` is where it started. A rule returns nothing when the problem does not hold (now).
The :class:`~nndiag.advisor.Advisor` turns successive evaluations into de-duplicated diagnoses
(first step, last step, count, resolved).

Example:
    >>> from nndiag.rules.registry import RULES, rule
    >>> @rule("example_code", requires=("loss",))
    ... def never(view, cfg):
    ...     return []
    >>> RULES.pop("example_code").requires
    ('loss',)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nndiag.diagnosis import Diagnosis
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.view import RunView

RuleFn = Callable[[RunView, AdvisorConfig], list[Diagnosis]]


@dataclass(frozen=True)
class Rule:
    """A registered rule: its code(s), the statistics it needs, and the function."""

    code: str
    requires: tuple[str, ...]
    fn: RuleFn

    def applies(self, view: RunView) -> bool:
        """Whether every required statistic was recorded."""
        return all(view.has(stat) for stat in self.requires)


RULES: dict[str, Rule] = {}


def rule(code: str, requires: tuple[str, ...] = ()) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` under ``code`` (a rule may emit related codes too; ``code`` names the rule)."""

    def register(fn: RuleFn) -> RuleFn:
        if code in RULES:
            raise ValueError(f"rule {code!r} registered twice")
        RULES[code] = Rule(code, requires, fn)
        return fn

    return register
