"""The sweep advisor: best trials, border check, next range, importance, diagnoses, grid warning.

:func:`analyze` runs every check of :mod:`nndiag.sweep.importance`, :mod:`nndiag.sweep.border` and
:mod:`nndiag.sweep.splits` over a :class:`~nndiag.sweep.trials.Sweep` and collects the verdicts in a
:class:`SweepReport`. The grid warning: an important hyperparameter (effect size >= 0.3, and the
most important one or at least 30% of the total) that took at most 4 distinct values over at least
10 trials, although its space allows 3x more, was searched on a grid; random search would have tried
a new value of it in every trial (the lecture: one parameter usually matters much more than the
others, and a grid wastes most trials on repeats of its few values).

Example:
    >>> from nndiag.sweep.trials import Param, Sweep, Trial
    >>> ts = [Trial(i, {"lr": 10 ** (-5 + 4 * i / 19)}, abs(i - 9) + 1.0) for i in range(20)]
    >>> r = analyze(Sweep("s", "", "minimize", "value", ts, {"lr": Param("lr", "float", 1e-5, 1e-1, log=True)}))
    >>> r.best[0].number, r.params[0].border_side, r.warnings
    (9, None, [])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nndiag.sweep.border import border, next_range, widen_hint
from nndiag.sweep.importance import effects, shares
from nndiag.sweep.splits import Split, outcome_splits
from nndiag.sweep.trials import Sweep, Trial, fmt, top_k

IMPORTANT_EFFECT = 0.3  # grid warning: only for parameters this important ...
IMPORTANT_SHARE = 0.3  # ... that are the most important one or hold this share of the total
GRID_MAX_VALUES = 4  # at most this many distinct values ...
GRID_MIN_TRIALS = 10  # ... over at least this many trials ...
GRID_ROOM = 3  # ... although the space allows this many times more


@dataclass(frozen=True)
class ParamAdvice:
    """What the sweep says about one hyperparameter (numeric fields are ``None`` for categories)."""

    name: str
    kind: str
    low: float | None
    high: float | None
    log: bool
    observed: bool
    distinct: int
    effect: float | None
    share: float | None
    best_value: Any
    border_side: str | None = None
    border_detail: str | None = None
    next_low: float | None = None
    next_high: float | None = None
    grid: bool = False


@dataclass(frozen=True)
class SweepReport:
    """Everything :func:`analyze` found; :meth:`to_dict` is the ``--json`` document."""

    sweep: Sweep
    best: list[Trial]
    params: list[ParamAdvice]
    splits: list[Split]
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Trials per state (``complete``, ``pruned``, ``failed``, ``running``) and in all."""
        out = {"total": len(self.sweep.trials)}
        for t in self.sweep.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats are cleaned by the CLI's ``dumps``)."""
        s = self.sweep

        def trial(t: Trial) -> dict[str, Any]:
            return {
                "number": t.number,
                "label": t.label,
                "value": t.value,
                "state": t.state,
                "params": t.params,
                "diagnoses": list(t.diagnoses),
                "note": t.note,
            }

        return {
            "study": s.name,
            "source": s.source,
            "direction": s.direction,
            "objective": s.objective,
            "counts": self.counts,
            "best": [trial(t) for t in self.best],
            "params": [vars(p) for p in self.params],
            "diagnosis_splits": [{**vars(x), "sentence": x.sentence()} for x in self.splits],
            "warnings": self.warnings,
            "notes": s.notes,
            "trials": [trial(t) for t in s.trials],
        }


def analyze(sweep: Sweep, top: int | None = None) -> SweepReport:
    """Run every check over ``sweep``; ``top`` overrides how many best trials are listed."""
    ok = sweep.ok_trials
    k = top_k(len(ok))
    best = ok[: top or k]
    eff = effects(sweep)
    share = shares(eff)
    ranked = sorted(sweep.params, key=lambda n: (-eff.get(n, -1.0), n))
    warnings: list[str] = []
    advice = []
    for name in ranked:
        param = sweep.params[name]
        sampled = [t.params[name] for t in sweep.trials if t.state != "running" and t.params.get(name) is not None]
        distinct = len(set(sampled))
        values = [t.params[name] for t in ok if t.params.get(name) is not None]
        best_value = values[0] if values else None
        if not param.numeric:
            advice.append(
                ParamAdvice(
                    name, param.kind, None, None, False, False, distinct, eff.get(name), share.get(name), best_value
                )
            )
            continue
        topv = [float(v) for v in values[:k]]
        verdict = border(param, topv, [float(v) for v in values], eff.get(name, 0.0))
        side = verdict.side if verdict else None
        lo_hi = next_range(param, topv, side) if verdict is not None else (None, None)
        detail = None
        if verdict is not None and side is not None and lo_hi[0] is not None and lo_hi[1] is not None:
            detail = (
                f"{verdict.in_band} of the best {verdict.k} trials lie in the {side} 15% of the "
                f"{'observed ' if param.observed else ''}range [{fmt(param.low)}, {fmt(param.high)}]"
                f"{' (log scale)' if param.log else ''}: {widen_hint(param, side, (lo_hi[0], lo_hi[1]))}"
            )
            warnings.append(f"{name}: best value on the border of the searched range; {detail}.")
        important = eff.get(name, 0.0) >= IMPORTANT_EFFECT and (
            name == ranked[0] or share.get(name, 0.0) >= IMPORTANT_SHARE
        )
        room = param.domain_size is None or param.domain_size >= GRID_ROOM * distinct
        grid = important and distinct <= GRID_MAX_VALUES and len(sampled) >= GRID_MIN_TRIALS and room
        if grid:
            warnings.append(
                f"{name} matters most (effect {eff[name]:.2f}) but took only {distinct} distinct values in "
                f"{len(sampled)} trials: a grid. Sample it at random{' in log space' if param.log else ''} "
                "instead; random search tries a new value of the important parameter in every trial."
            )
        advice.append(
            ParamAdvice(
                name,
                param.kind,
                param.low,
                param.high,
                param.log,
                param.observed,
                distinct,
                eff.get(name),
                share.get(name),
                best_value,
                side,
                detail,
                lo_hi[0],
                lo_hi[1],
                grid,
            )
        )
    return SweepReport(sweep, best, advice, outcome_splits(sweep), warnings)
