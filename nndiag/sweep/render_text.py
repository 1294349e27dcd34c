"""The terminal rendering of a :class:`~nndiag.sweep.analysis.SweepReport`.

Example:
    >>> from nndiag.sweep.analysis import analyze
    >>> from nndiag.sweep.trials import Param, Sweep, Trial
    >>> ts = [Trial(i, {"lr": 10 ** (-5 + 4 * i / 19)}, abs(i - 9) + 1.0) for i in range(20)]
    >>> space = {"lr": Param("lr", "float", 1e-5, 1e-1, log=True)}
    >>> text = render_text(analyze(Sweep("s", "db", "minimize", "value", ts, space)))
    >>> print(text.splitlines()[1])
    20 trials: 20 complete
"""

from __future__ import annotations

from nndiag.sweep.analysis import ParamAdvice, SweepReport
from nndiag.sweep.trials import fmt


def _range(p: ParamAdvice) -> str:
    if p.low is None or p.high is None:
        return "categorical"
    return f"[{fmt(p.low)}, {fmt(p.high)}]{' observed' if p.observed else ''}"


def _next(p: ParamAdvice) -> str:
    if p.next_low is None or p.next_high is None:
        return "-"
    return f"[{fmt(p.next_low)}, {fmt(p.next_high)}]"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render_text(report: SweepReport) -> str:
    """A plain-text report: counts, best trials, per-parameter advice, diagnoses, warnings, notes."""
    s = report.sweep
    counts = report.counts
    states = ", ".join(f"{counts[k]} {k}" for k in ("complete", "pruned", "failed", "running") if counts.get(k))
    lines = [f"Sweep {s.name} ({s.source}): {s.direction} {s.objective}", f"{counts['total']} trials: {states}"]
    lines.append("")
    if report.best:
        lines.append(f"Best {len(report.best)} trials:")
        rows = [["trial", s.objective, "hyperparameters", "diagnoses"]]
        for t in report.best:
            params = " ".join(f"{k}={fmt(v)}" for k, v in t.params.items())
            rows.append([t.label or str(t.number), fmt(t.value), params, ", ".join(t.diagnoses) or "-"])
        lines += _table(rows)
    else:
        lines.append("No finished trial with a finite objective yet.")
    if report.params:
        lines += ["", "Hyperparameters, most important first (effect: share of the objective's variation it explains):"]
        rows = [["name", "searched range", "scale", "effect", "best value", "next range", "border"]]
        for p in report.params:
            scale = "-" if p.low is None else ("log" if p.log else "linear")
            effect = "-" if p.effect is None else f"{p.effect:.2f}"
            border = p.border_side or ("-" if p.next_low is None else "no")
            rows.append([p.name, _range(p), scale, effect, fmt(p.best_value), _next(p), border])
        lines += _table(rows)
    if report.splits:
        lines += ["", "Diagnoses over the search space:"]
        lines += [f"  {x.sentence()}" for x in report.splits]
    if report.warnings:
        lines += ["", "Warnings:"]
        lines += [f"  - {w}" for w in report.warnings]
    if s.notes:
        lines += ["", "Notes:"]
        lines += [f"  - {n}" for n in s.notes]
    return "\n".join(lines)
