"""The HTML comparison of several runs: verdicts, problems that appeared or disappeared, losses overlaid.

Example:
    >>> import tempfile, numpy as np
    >>> from nndiag.rows import Rows
    >>> from nndiag.store.writer import RunStore
    >>> from nndiag.report.model import build_report
    >>> runs = []
    >>> for end in (2.1, 1.5):
    ...     d = tempfile.mkdtemp()
    ...     s = RunStore(d)
    ...     s.write_rows(Rows(np.array([0, 1]), ["", ""], ["loss"] * 2, np.array([2.3, end])))
    ...     s.close()
    ...     runs.append(build_report(d))
    >>> "nndiag comparison" in render_comparison_html(Comparison(runs), "")
    True
"""

from __future__ import annotations

import time

from nndiag._version import __version__
from nndiag.render.page import esc, page
from nndiag.report.compare import Comparison, key_text
from nndiag.report.html_run import diagnosis_html, verdict_html
from nndiag.report.text import num


def _runs_table(comparison: Comparison) -> str:
    head = "<tr><th>#</th><th class='name'>run</th><th class='name'>verdict</th><th>steps</th><th>final loss</th>"
    head += "<th>min loss</th><th>best val loss</th></tr>"
    rows = []
    for i, r in enumerate(comparison.runs):
        o = r.overview
        rows.append(
            f"<tr><td>{i}</td><td class='name' title='{esc(r.path)}'>{esc(r.name)}</td>"
            f"<td class='name'>{esc(r.verdict.headline)}</td><td>{o['optimizer_steps']}</td>"
            f"<td>{num(o['loss_last'])}</td><td>{num(o['loss_min'])}</td><td>{num(o['val_loss_min'])}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _changes(comparison: Comparison) -> str:
    out = []
    for i, ch in enumerate(comparison.changes(), start=1):
        items = []
        for label, css in (("appeared", "appeared"), ("disappeared", "disappeared"), ("persisting", "")):
            text = ", ".join(esc(x) for x in ch[label]) or "none"
            items.append(f"<li><span class='{css}'><b>{label}</b></span>: {text}</li>")
        out.append(f"<h3>Run {i}: {esc(comparison.runs[i].name)}</h3><ul>{''.join(items)}</ul>")
    return "".join(out)


def _matrix(comparison: Comparison) -> str:
    keys = comparison.keys()
    if not keys:
        return "<p>No run has a diagnosis.</p>"
    head = "<tr><th class='name'>problem</th>" + "".join(f"<th>run {i}</th>" for i in range(len(comparison.runs)))
    rows = []
    for k in keys:
        cells = []
        for r in comparison.runs:
            d = comparison.cell(r, k)
            if d is None:
                cells.append("<td></td>")
            else:
                state = " (resolved)" if d.resolved else ""
                cells.append(f"<td><span class='sev {esc(d.severity)}'>{esc(d.severity)}</span>{state}</td>")
        rows.append(f"<tr><td class='name'>{esc(key_text(k))}</td>{''.join(cells)}</tr>")
    return f"<div class='scroll'><table>{head}</tr>{''.join(rows)}</table></div>"


def render_comparison_html(comparison: Comparison, overlay_img: str) -> str:
    """The complete comparison page (``overlay_img``: the drawn loss overlay, or ``""``)."""
    runs = comparison.runs
    per_run = "".join(
        f"<h3>Run {i}: {esc(r.name)}</h3>{verdict_html(r)}"
        + "".join(diagnosis_html(d) for d in r.diagnoses if not d.resolved)
        for i, r in enumerate(runs)
    )
    body = (
        f"<h1>nndiag comparison of {len(runs)} runs</h1>"
        f"<div class='meta'>baseline: run 0 ({esc(runs[0].path)})</div>"
        + _runs_table(comparison)
        + "<h2>Problems against the baseline</h2>"
        + _changes(comparison)
        + (
            f"<h2>Loss curves</h2><figure>{overlay_img}<figcaption>trends of the training loss (rolling median); "
            "validation loss dashed</figcaption></figure>"
            if overlay_img
            else ""
        )
        + "<h2>Diagnoses per run</h2>"
        + _matrix(comparison)
        + f"<h2>Open diagnoses of each run</h2><div id='diagnoses'>{per_run}</div>"
        + f"<footer>nndiag {esc(__version__)} · generated {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</footer>"
    )
    return page(f"nndiag comparison of {len(runs)} runs", body)
