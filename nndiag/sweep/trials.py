"""The normalised table of trials that every sweep analysis works on, whatever its source.

A :class:`Sweep` holds the trials (:class:`Trial`), the search space (:class:`Param` per
hyperparameter) and the optimisation direction. Sources (:mod:`nndiag.sweep.sources`) build it
from an Optuna study or from a folder of nndiag runs; the analysis never sees either.

Example:
    >>> p = Param("lr", "float", 1e-5, 1e-1, log=True)
    >>> round(p.position(1e-3), 3), p.value_at(0.25)
    (0.5, 0.0001)
    >>> t = Trial(0, {"lr": 1e-3}, 0.5)
    >>> t.ok, Trial(1, {"lr": 1.0}, None, state="failed").ok
    (True, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["float", "int", "categorical"]
Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Param:
    """One hyperparameter's search space.

    Attributes:
        name: the hyperparameter's name.
        kind: ``"float"``, ``"int"`` or ``"categorical"``.
        low, high: the sampled range (numeric kinds; ``nan`` for categorical).
        log: sampled in log space (Optuna ``log=True``; for run folders inferred, see sources).
        observed: ``True`` when ``low``/``high`` are the observed extremes, not declared bounds.
        choices: the categories (categorical kind).
        domain_size: how many distinct values the space allows (``None``: unlimited, floats).

    """

    name: str
    kind: Kind
    low: float = math.nan
    high: float = math.nan
    log: bool = False
    observed: bool = False
    choices: tuple[Any, ...] = ()
    domain_size: int | None = None

    @property
    def numeric(self) -> bool:
        """Whether the parameter has an ordered numeric range (float or int)."""
        return self.kind != "categorical"

    def _t(self, x: float) -> float:
        return math.log10(x) if self.log else x

    def position(self, value: float) -> float:
        """Where ``value`` lies in the range: 0 at ``low``, 1 at ``high`` (log scale when ``log``)."""
        lo, hi = self._t(self.low), self._t(self.high)
        return 0.5 if hi == lo else (self._t(value) - lo) / (hi - lo)

    def value_at(self, position: float) -> float:
        """Inverse of :meth:`position`."""
        lo, hi = self._t(self.low), self._t(self.high)
        x = lo + position * (hi - lo)
        return 10**x if self.log else x


@dataclass(frozen=True)
class Trial:
    """One training run of a sweep.

    Attributes:
        number: the trial's number (Optuna) or index (run folder, in path order).
        params: hyperparameter values.
        value: the objective, ``None`` when the trial failed, was pruned or is still running.
        state: ``"complete"``, ``"pruned"``, ``"failed"`` or ``"running"``.
        diagnoses: nndiag diagnosis codes seen in the trial (any severity, open or resolved).
        label: where the trial comes from (run folder, or ``"trial N"``).
        note: why it was pruned or failed, when known.

    """

    number: int
    params: dict[str, Any]
    value: float | None
    state: str = "complete"
    diagnoses: tuple[str, ...] = ()
    label: str = ""
    note: str | None = None

    @property
    def ok(self) -> bool:
        """A finished trial with a finite objective value."""
        return self.state == "complete" and self.value is not None and math.isfinite(self.value)


@dataclass(frozen=True)
class Sweep:
    """A hyperparameter search: trials, search space and direction.

    Attributes:
        name: the study name or the runs folder.
        source: the storage URL or folder it was read from.
        direction: ``"minimize"`` or ``"maximize"``.
        objective: what the value is (``"value"`` for Optuna, the stat for run folders).
        trials: all trials, in number order.
        params: the search space, by hyperparameter name.
        notes: remarks made while reading (skipped runs, inferred ranges).

    """

    name: str
    source: str
    direction: Direction
    objective: str
    trials: list[Trial]
    params: dict[str, Param]
    notes: list[str] = field(default_factory=list)

    @property
    def ok_trials(self) -> list[Trial]:
        """Finished trials with a finite value, best first."""
        good = [t for t in self.trials if t.ok]
        sign = 1.0 if self.direction == "minimize" else -1.0
        return sorted(good, key=lambda t: (sign * float(t.value or 0.0), t.number))


def top_k(n: int) -> int:
    """How many of ``n`` finished trials count as "the best": ``max(3, 10%)``, at most ``n``.

    Example:
        >>> top_k(2), top_k(20), top_k(100)
        (2, 3, 10)
    """
    return min(n, max(3, math.ceil(0.1 * n)))


def fmt(value: Any) -> str:
    """A compact number (3 significant digits) or the value's text.

    Example:
        >>> fmt(0.000123456), fmt(1e-5), fmt(3), fmt(250.0), fmt("adam")
        ('1.23e-04', '1e-05', '3', '250', 'adam')
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value != 0 and math.isfinite(value) and (abs(value) < 1e-2 or abs(value) >= 1e5):
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
    return f"{value:.3g}"
