"""The HTML page of a sweep: the text report's sections plus the objective against each hyperparameter.

One self-contained page (:func:`nndiag.render.page.page`): figures are embedded PNGs, nothing is
fetched, and every name and value that comes from the study or the runs is escaped.

Example:
    >>> from nndiag.sweep.analysis import analyze
    >>> from nndiag.sweep.trials import Param, Sweep, Trial
    >>> ts = [Trial(i, {"<b>": 10 ** (-5 + 4 * i / 9)}, abs(i - 4) + 1.0) for i in range(10)]
    >>> space = {"<b>": Param("<b>", "float", 1e-5, 1e-1, log=True)}
    >>> html = render_html(analyze(Sweep("s", "db", "minimize", "value", ts, space)))
    >>> "&lt;b&gt;" in html and "<b>" not in html and html.count("<img") == 1
    True
"""

from __future__ import annotations

from typing import Any

from nndiag.render.figure import img_tag, new_figure, plain_text
from nndiag.render.page import esc, page
from nndiag.sweep.analysis import ParamAdvice, SweepReport
from nndiag.sweep.trials import Trial, fmt


def _plot(report: SweepReport, p: ParamAdvice) -> str:
    """Objective against one numeric hyperparameter: best trials highlighted, failed ones marked."""
    s = report.sweep
    best = {t.number for t in report.best}
    ok = [t for t in s.ok_trials if t.params.get(p.name) is not None]
    bad = [t for t in s.trials if not t.ok and t.state != "running" and t.params.get(p.name) is not None]
    fig = new_figure(6.4, 3.4)
    ax = fig.add_subplot()
    xs = [float(t.params[p.name]) for t in ok]
    ys = [float(t.value or 0.0) for t in ok]
    ax.scatter(xs, ys, s=18, color="#1f5fa8", alpha=0.7, label="finished")
    top = [t for t in ok if t.number in best]
    ax.scatter(
        [float(t.params[p.name]) for t in top],
        [float(t.value or 0.0) for t in top],
        s=60,
        facecolors="none",
        edgecolors="#e8710a",
        linewidths=1.8,
        label="best",
    )
    if ys and min(ys) > 0 and max(ys) / min(ys) > 100:
        ax.set_yscale("log")
    if bad:
        # failed/pruned trials have no objective: mark them along the worst edge of the plot
        lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        y_bad = hi if s.direction == "minimize" else lo
        ax.scatter(
            [float(t.params[p.name]) for t in bad],
            [y_bad] * len(bad),
            marker="x",
            color="#b3261e",
            label="failed / pruned (no value)",
        )
    if p.log:
        ax.set_xscale("log")
    if p.low is not None and p.high is not None:
        for edge in (p.low, p.high):
            ax.axvline(edge, color="#5f6368", linestyle="--", linewidth=0.8)
    if p.next_low is not None and p.next_high is not None:
        ax.axvspan(p.next_low, p.next_high, color="#1b7f3b", alpha=0.12, label="next range")
    ax.set_xlabel(plain_text(p.name + (" (log scale)" if p.log else "")))
    ax.set_ylabel(plain_text(s.objective))
    ax.legend(fontsize=7, loc="best")
    alt = f"{s.objective} against {p.name}"
    caption = f"{s.objective} against {p.name}; dashed: searched range; green: suggested next range."
    if p.border_detail:
        caption += f" {p.border_detail}."
    return f"<figure>{img_tag(fig, alt)}<figcaption>{esc(caption)}</figcaption></figure>"


def _cell(value: Any) -> str:
    return f"<td>{esc(fmt(value))}</td>"


def _trial_row(t: Trial) -> str:
    params = " ".join(f"{k}={fmt(v)}" for k, v in t.params.items())
    return (
        f"<tr><td class='name'>{esc(t.label or t.number)}</td>{_cell(t.value)}"
        f"<td class='name'>{esc(params)}</td><td class='name'>{esc(', '.join(t.diagnoses) or '-')}</td></tr>"
    )


def _param_row(p: ParamAdvice) -> str:
    searched = "categorical" if p.low is None else f"[{fmt(p.low)}, {fmt(p.high)}]{' observed' if p.observed else ''}"
    nxt = "-" if p.next_low is None else f"[{fmt(p.next_low)}, {fmt(p.next_high)}]"
    effect = "-" if p.effect is None else f"{p.effect:.2f}"
    bad = " class='bad'" if p.border_side or p.grid else ""
    return (
        f"<tr><td class='name'>{esc(p.name)}</td><td>{esc(searched)}</td><td>{'log' if p.log else '-'}</td>"
        f"<td>{esc(effect)}</td>{_cell(p.best_value)}<td>{esc(nxt)}</td>"
        f"<td{bad}>{esc(p.border_side or ('grid' if p.grid else '-'))}</td></tr>"
    )


def render_html(report: SweepReport) -> str:
    """The complete HTML page of ``report``."""
    s = report.sweep
    counts = report.counts
    states = ", ".join(f"{counts[k]} {k}" for k in ("complete", "pruned", "failed", "running") if counts.get(k))
    parts = [
        f"<h1>Sweep {esc(s.name)}</h1>",
        f"<div class='meta'>{esc(s.source)} &middot; {esc(s.direction)} {esc(s.objective)} &middot; "
        f"{counts['total']} trials: {esc(states)}</div>",
    ]
    if report.warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in report.warnings)
        parts.append(f"<div class='verdict warnings'><ul class='fixes'>{items}</ul></div>")
    else:
        parts.append("<div class='verdict healthy'>No border, grid or range problems found.</div>")
    parts.append("<h2>Best trials</h2>")
    if report.best:
        head = f"<tr><th class='name'>trial</th><th>{esc(s.objective)}</th><th class='name'>hyperparameters</th>"
        parts.append(
            f"<table>{head}<th class='name'>diagnoses</th></tr>{''.join(map(_trial_row, report.best))}</table>"
        )
    else:
        parts.append("<p>No finished trial with a finite objective yet.</p>")
    if report.params:
        parts.append("<h2>Hyperparameters, most important first</h2>")
        head = (
            "<tr><th class='name'>name</th><th>searched range</th><th>scale</th><th>effect</th>"
            "<th>best value</th><th>next range</th><th>border</th></tr>"
        )
        parts.append(f"<table>{head}{''.join(map(_param_row, report.params))}</table>")
    if report.splits:
        parts.append("<h2>Diagnoses over the search space</h2><ul>")
        parts += [f"<li>{esc(x.sentence())}</li>" for x in report.splits]
        parts.append("</ul>")
    numeric = [p for p in report.params if p.low is not None]
    if numeric and s.ok_trials:
        parts.append("<h2>Objective against each hyperparameter</h2>")
        parts += [_plot(report, p) for p in numeric]
    if s.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in s.notes) + "</ul>")
    return page(f"nndiag sweep: {s.name}", "\n".join(parts))
