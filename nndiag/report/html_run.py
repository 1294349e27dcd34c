"""The HTML report of one run: verdict, diagnoses, pictures, per-layer table. Self-contained.

Every model-supplied string (layer names, messages, hyperparameters) is escaped.

Example:
    >>> import tempfile, numpy as np
    >>> from nndiag.rows import Rows
    >>> from nndiag.store.writer import RunStore
    >>> from nndiag.report.model import build_report
    >>> d = tempfile.mkdtemp()
    >>> s = RunStore(d); s.write_rows(Rows(np.array([0, 1]), ["", ""], ["loss"] * 2, np.array([2.3, 2.1]))); s.close()
    >>> html = render_run_html(build_report(d), [])
    >>> "Healthy" in html and "<script" not in html
    True
"""

from __future__ import annotations

import time

import pandas as pd

from nndiag._version import __version__
from nndiag.diagnosis import Diagnosis
from nndiag.render.page import esc, page
from nndiag.report.model import RunReport
from nndiag.report.text import evidence_text, num, steps_text
from nndiag.summary import ACTIVATION_STATS, PARAMETER_STATS

RenderedPicture = tuple[str, str, str]  # (title, caption, <img> html)


def diagnosis_html(d: Diagnosis) -> str:
    """One diagnosis card: severity, code, layer, steps, message, evidence and fixes."""
    layer = f' <span class="layer">{esc(d.layer)}</span>' if d.layer else ""
    fixes = "".join(f"<li>{esc(s)}</li>" for s in d.suggestions)
    evidence = f'<div class="evidence">evidence: {esc(evidence_text(d.evidence))}</div>' if d.evidence else ""
    return (
        f'<div class="diag {esc(d.severity)}{" resolved" if d.resolved else ""}">'
        f'<span class="sev {esc(d.severity)}">{esc(d.severity)}</span><span class="code">{esc(d.code)}</span>{layer} '
        f'<span class="steps">{esc(steps_text(d))}</span>'
        f"<div>{esc(d.message)}</div>{evidence}"
        + (f'<div>Try:</div><ul class="fixes">{fixes}</ul>' if fixes else "")
        + "</div>"
    )


def diagnoses_html(diagnoses: list[Diagnosis]) -> str:
    """Open diagnoses first (most severe, root causes first), then those that resolved."""
    if not diagnoses:
        return "<p>The advisors found nothing to report.</p>"
    open_ = [d for d in diagnoses if not d.resolved]
    resolved = [d for d in diagnoses if d.resolved]
    out = "".join(diagnosis_html(d) for d in open_)
    if resolved:
        out += "<h3>Resolved during training</h3>" + "".join(diagnosis_html(d) for d in resolved)
    return out


def layer_table_html(report: RunReport) -> str:
    """The per-layer summary table (first -> last logging step); layers named in an open diagnosis marked."""
    table = report.layers
    if table.empty:
        return "<p>No per-layer statistics were recorded.</p>"
    flagged = {d.layer for d in report.diagnoses if d.layer and not d.resolved}
    stats = [s for s in (*ACTIVATION_STATS, *PARAMETER_STATS) if f"{s} first" in table.columns]
    head = '<tr><th class="name">layer / parameter</th><th class="name">kind</th>' + "".join(
        f"<th>{esc(s)}</th>" for s in stats
    )
    rows = []
    for name, row in table.iterrows():
        cells = []
        for s in stats:
            a, b = row[f"{s} first"], row[f"{s} last"]
            cells.append("<td></td>" if pd.isna(a) and pd.isna(b) else f"<td>{num(a)} → {num(b)}</td>")
        mark = ' class="name bad" title="named in an open diagnosis"' if name in flagged else ' class="name"'
        kind = esc(report.layer_kind(str(name)))
        rows.append(f'<tr><td{mark}>{esc(name)}</td><td class="name">{kind}</td>{"".join(cells)}</tr>')
    return f'<div class="scroll"><table>{head}</tr>{"".join(rows)}</table></div>'


def hparams_html(hparams: dict[str, object]) -> str:
    """The run's hyperparameters as a two-column table (empty string when none were recorded)."""
    if not hparams:
        return ""
    rows = "".join(f'<tr><td class="name">{esc(k)}</td><td>{esc(v)}</td></tr>' for k, v in hparams.items())
    return f"<h2>Hyperparameters</h2><table>{rows}</table>"


def header_html(report: RunReport) -> str:
    """Title, where the run is, what it recorded."""
    o, m = report.overview, report.meta
    facts = [
        f"status <b>{esc(report.verdict.status)}</b>",
        f"{o['optimizer_steps']} optimizer steps",
        f"{o['logging_steps']} logging steps",
        f"{o['layers']} layers, {o['parameters']} parameter tensors",
    ]
    if o["loss_first"] is not None or o["loss_last"] is not None:
        facts.append(f"loss {num(o['loss_first'])} → {num(o['loss_last'])} (min {num(o['loss_min'])})")
    if o["val_loss_last"] is not None:
        facts.append(f"validation loss {num(o['val_loss_last'])} (min {num(o['val_loss_min'])})")
    task = o.get("task")
    if task:
        facts.append(f"loss {esc(task['loss'])}, output activation {esc(task['output_activation'] or 'unknown')}")
        if task["targets"]:
            facts.append(f"targets: {esc(task['targets'])}")
        if task["baseline_loss"] is not None:
            facts.append(f"a constant prediction scores {num(task['baseline_loss'])}")
    origin = [str(x) for x in (m.get("framework"), report.facts.model_class, m.get("created")) if x]
    return (
        f"<h1>nndiag report: {esc(report.name)}</h1>"
        f'<div class="meta">{esc(report.path)}<br>{" · ".join(facts)}'
        + (f"<br>{esc(' · '.join(origin))}" if origin else "")
        + "</div>"
    )


def verdict_html(report: RunReport) -> str:
    """The verdict box."""
    v = report.verdict
    css = {"problems": "problems" if v.worst == "error" else "warnings", "healthy": "healthy"}.get(
        v.state, "incomplete"
    )
    if not v.complete and v.state != "problems":
        css = "incomplete"
    return f'<div class="verdict {css}" id="verdict">{esc(v.headline)}</div>'


def render_run_html(report: RunReport, pictures: list[RenderedPicture]) -> str:
    """The complete page for one run (``pictures`` already drawn, see :mod:`nndiag.report.pictures`)."""
    figs = "".join(
        f"<h2>{esc(title)}</h2><figure>{img}<figcaption>{esc(caption)}</figcaption></figure>"
        for title, caption, img in pictures
    )
    body = (
        header_html(report)
        + verdict_html(report)
        + f'<h2>Diagnoses</h2><div id="diagnoses">{diagnoses_html(report.diagnoses)}</div>'
        + figs
        + "<h2>Per-layer summary (first → last logging step)</h2>"
        + layer_table_html(report)
        + hparams_html(report.meta.get("hparams") or {})
        + f"<footer>nndiag {esc(__version__)} · generated {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</footer>"
    )
    return page(f"nndiag report: {report.name}", body)
