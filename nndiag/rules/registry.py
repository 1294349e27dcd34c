"""Rule registry: the one place that owns each diagnosis code.

A rule is a pure function ``(RunView, thresholds) -> list[Diagnosis]``, registered with
:func:`rule`, which declares everything nndiag needs to know about its code:

* ``severity``: the severities it may emit (one, or a range such as ``("warning", "error")``);
* ``rank``: its place in the cause order (:data:`nndiag.advisor.CAUSE_ORDER`: lower ranks are
  root causes, named first; set-up faults 100-199, mechanisms 200-299, symptoms 300-399);
* ``explained_by``: the codes that explain it (it is not reported while one of them holds);
* ``requires``: the recorded statistics it needs (skipped quietly when one is absent);
* ``thresholds``: a small frozen dataclass of its numbers, declared next to the rule;
  :class:`~nndiag.AdvisorConfig` is composed from all of them;
* ``broken``: whether the code means "this run is broken" (the Optuna pruner and the sweep
  treat such runs as failed);
* ``summary``: one line for the code table in ``docs/rules.md``;
* ``record``: the code is a record of something nndiag did (``remedied``), published by nndiag
  itself, never evaluated or resolved by the advisors (its function is never called).

Everything else is derived from here: ``DIAGNOSIS_CODES``, ``CAUSE_ORDER``, ``EXPLAINED_BY``,
``BROKEN_CODES`` and the documentation table. Adding a rule is one decorated function in one
rule module (plus its tests).

Each returned :class:`~nndiag.Diagnosis` describes the problem *as it holds at the end of the
view*: ``step`` is where it started. A rule returns nothing when the problem does not hold (now).
The :class:`~nndiag.advisor.Advisor` turns successive evaluations into de-duplicated diagnoses
(first step, last step, count, resolved).

Example:
    >>> from dataclasses import dataclass
    >>> from nndiag.diagnosis import CODE_REGISTRY
    >>> from nndiag.rules.registry import RULES, rule
    >>> @dataclass(frozen=True)
    ... class NeverThresholds:
    ...     never_level: float = 1.0  # a made-up threshold
    >>> @rule("example_code", severity="info", rank=399, requires=("loss",), thresholds=NeverThresholds,
    ...       summary="never")
    ... def never(view, t):
    ...     return []
    >>> spec = RULES.pop("example_code")
    >>> _ = CODE_REGISTRY.pop("example_code")
    >>> spec.requires, spec.severities, spec.thresholds().never_level
    (('loss',), ('info',), 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, fields
from typing import Any

from nndiag.diagnosis import CODE_REGISTRY, SEVERITIES, Diagnosis, Severity
from nndiag.rules.view import RunView

RuleFn = Callable[[RunView, Any], list[Diagnosis]]


@dataclass(frozen=True)
class NoThresholds:
    """The thresholds of a rule that has none."""


@dataclass(frozen=True)
class Rule:
    """A registered rule: its code and everything the product derives from it (see the module docs)."""

    code: str
    requires: tuple[str, ...]
    fn: RuleFn
    severities: tuple[Severity, ...] = ("warning",)
    rank: float = 399.0
    explained_by: tuple[str, ...] = ()
    thresholds: type = NoThresholds
    broken: bool = False
    summary: str = ""
    record: bool = False

    def applies(self, view: RunView) -> bool:
        """Whether every required statistic was recorded."""
        return all(view.has(stat) for stat in self.requires)

    @property
    def severity_text(self) -> str:
        """``error``, or ``error / warning`` for a rule that emits several severities (most severe first)."""
        return " / ".join(s for s in reversed(SEVERITIES) if s in self.severities)


RULES: dict[str, Rule] = {}


def rule(
    code: str,
    requires: Iterable[Any] = (),
    *,
    severity: Severity | tuple[Severity, ...] = "warning",
    rank: float = 399.0,
    explained_by: tuple[str, ...] = (),
    thresholds: type = NoThresholds,
    broken: bool = False,
    summary: str = "",
    record: bool = False,
) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as the rule that owns ``code``.

    ``requires`` holds statistic names or :mod:`nndiag.stats.quantities` entries (anything with a
    ``name``). Raises ``ValueError`` for a code registered twice, an unknown severity, or a
    threshold that two rules declare with different defaults.
    """
    severities: tuple[Severity, ...] = (severity,) if isinstance(severity, str) else tuple(severity)
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise ValueError(f"rule {code!r}: severity must be among {SEVERITIES}, got {severity!r}.")
    names = tuple(str(getattr(r, "name", r)) for r in requires)

    def register(fn: RuleFn) -> RuleFn:
        if code in RULES:
            raise ValueError(f"rule {code!r} registered twice")
        spec = Rule(code, names, fn, severities, float(rank), tuple(explained_by), thresholds, broken, summary, record)
        _check_thresholds(spec, RULES.values())
        RULES[code] = spec
        CODE_REGISTRY[code] = spec.rank
        return fn

    return register


def threshold_defaults(rules: Iterable[Rule] | None = None) -> dict[str, tuple[Any, type | str]]:
    """Every threshold of the registered rules: ``name -> (default, annotated type)``.

    A threshold shared by several rules (through a shared base dataclass) appears once.
    """
    out: dict[str, tuple[Any, type | str]] = {}
    for spec in RULES.values() if rules is None else rules:
        for f in fields(spec.thresholds):
            if f.default is MISSING:
                raise ValueError(f"threshold {f.name} of rule {spec.code!r} needs a default")
            out.setdefault(f.name, (f.default, f.type))
    return out


def _check_thresholds(spec: Rule, others: Iterable[Rule]) -> None:
    known = threshold_defaults(list(others))
    for name, (default, _) in threshold_defaults([spec]).items():
        if name in known and known[name][0] != default:
            raise ValueError(
                f"threshold {name} of rule {spec.code!r} has default {default!r}, but another rule declares "
                f"{known[name][0]!r}: share one dataclass instead."
            )


def cause_order() -> tuple[str, ...]:
    """All codes, root causes first (by ``rank``, then code)."""
    return tuple(sorted(RULES, key=lambda code: (RULES[code].rank, code)))


def explained_by() -> dict[str, tuple[str, ...]]:
    """``code -> codes that explain it`` for every code that declares some."""
    return {code: spec.explained_by for code, spec in RULES.items() if spec.explained_by}


def broken_codes() -> tuple[str, ...]:
    """The codes that mean "this run is broken", in cause order."""
    return tuple(code for code in cause_order() if RULES[code].broken)
