"""The :class:`Diagnosis` record every advisor produces.

Example:
    >>> from nndiag import Diagnosis
    >>> d = Diagnosis(
    ...     code="dead_units", severity="warning", step=40, layer="features.1",
    ...     message="82% of the units of features.1 never activate.",
    ...     evidence={"dead_frac": 0.82}, suggestions=["Lower the learning rate."],
    ... )
    >>> d.to_dict()["code"]
    'dead_units'
    >>> Diagnosis.from_dict(d.to_dict()) == d
    True

"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error")


@dataclass(frozen=True)
class Diagnosis:
    """One problem found in a run: what, where, since when, why we think so, and what to try.

    Attributes:
        code: stable snake_case identifier (``"lr_too_high"``).
        severity: ``"error"`` training is broken, ``"warning"`` impaired, ``"info"`` advice.
        step: first optimizer step (0-based) at which the problem held.
        layer: qualified module or parameter name, or ``None`` for run-wide problems.
        message: one sentence: the cause in plain words with its key number.
        evidence: the numbers behind the verdict.
        suggestions: fixes, most promising first.
        last_step: last optimizer step at which it still held (``None`` = same as ``step``).
        count: number of checks at which it held.
        resolved: ``True`` once the problem stopped holding.

    """

    code: str
    severity: Severity
    step: int
    layer: str | None
    message: str
    evidence: dict[str, float] = field(default_factory=dict)
    suggestions: list[str] = field(default_factory=list)
    last_step: int | None = None
    count: int = 1
    resolved: bool = False

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"Diagnosis severity must be one of {SEVERITIES}, got {self.severity!r}.")

    def headline(self) -> str:
        """Code, layer, steps and state in one phrase: the prefix of every one-line rendering.

        Example:
            >>> Diagnosis("dead_units", "warning", 3, "fc1", "...", last_step=40, resolved=True).headline()
            'dead_units [fc1] at steps 3-40 (resolved)'
            >>> Diagnosis("nonfinite_loss", "error", 7, None, "...").headline()
            'nonfinite_loss at step 7'
        """
        where = f" [{self.layer}]" if self.layer else ""
        return f"{self.code}{where} at {self.span()}{' (resolved)' if self.resolved else ''}"

    def span(self) -> str:
        """``step 7``, or ``steps 7-120`` for a problem that held over several checks.

        Example:
            >>> Diagnosis("lr_too_low", "warning", 7, None, "...", last_step=120).span()
            'steps 7-120'
        """
        return f"steps {self.step}-{self.last_step}" if self.last_step not in (None, self.step) else f"step {self.step}"

    def one_line(self) -> str:
        """``[severity] headline: message``, as the CLI and the demo print it.

        Example:
            >>> Diagnosis("nonfinite_loss", "error", 7, None, "The loss became NaN.").one_line()
            '[error] nonfinite_loss at step 7: The loss became NaN.'
        """
        return f"[{self.severity}] {self.headline()}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Diagnosis:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (forward compatibility)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def __getattr__(name: str) -> Any:
    """``DIAGNOSIS_CODES``: every code the registered rules own, in cause order (a contract: stable names).

    Derived from the rule registry (:mod:`nndiag.rules.registry`), which fills
    :data:`CODE_REGISTRY` as the rule modules are imported (``import nndiag`` imports them all).
    """
    if name == "DIAGNOSIS_CODES":
        return tuple(sorted(CODE_REGISTRY, key=lambda code: (CODE_REGISTRY[code], code)))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# code -> rank in the cause order; written only by nndiag.rules.registry.rule.
CODE_REGISTRY: dict[str, float] = {}
