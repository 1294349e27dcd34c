"""Markdown renderings (for a CI comment or a notebook): one run, or a comparison.

Example:
    >>> import tempfile, numpy as np
    >>> from nndiag.rows import Rows
    >>> from nndiag.store.writer import RunStore
    >>> from nndiag.report.model import build_report
    >>> d = tempfile.mkdtemp()
    >>> s = RunStore(d); s.write_rows(Rows(np.array([0, 1]), ["", ""], ["loss"] * 2, np.array([2.3, 2.1]))); s.close()
    >>> print(run_markdown(build_report(d)).splitlines()[2])
    **Verdict: Healthy: no problems found in 2 optimizer steps.**
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from nndiag.report.compare import Comparison, key_text
from nndiag.report.model import RunReport
from nndiag.report.text import evidence_text, num
from nndiag.sinks.tensorboard import diagnoses_markdown, markdown_escape
from nndiag.summary import ACTIVATION_STATS, PARAMETER_STATS


def _layers_markdown(report: RunReport) -> str:
    table = report.layers
    if table.empty:
        return "No per-layer statistics were recorded."
    stats = [s for s in (*ACTIVATION_STATS, *PARAMETER_STATS) if f"{s} first" in table.columns]
    lines = ["| layer | " + " | ".join(stats) + " |", "|---|" + "---|" * len(stats)]
    for name, row in table.iterrows():
        cells = [
            ""
            if pd.isna(row[f"{s} first"]) and pd.isna(row[f"{s} last"])
            else f"{num(row[f'{s} first'])} → {num(row[f'{s} last'])}"
            for s in stats
        ]
        lines.append(f"| {markdown_escape(str(name))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_markdown(report: RunReport) -> str:
    """The report of one run: verdict, diagnoses table with fixes, overview, per-layer table."""
    o = report.overview
    out = [
        f"# nndiag report: {markdown_escape(report.name)}",
        "",
        f"**Verdict: {markdown_escape(report.verdict.headline)}**",
        "",
        f"{markdown_escape(str(report.path))}: status {markdown_escape(report.verdict.status)}, "
        f"{o['optimizer_steps']} optimizer steps, {o['logging_steps']} logging steps, {o['layers']} layers; "
        f"loss {num(o['loss_first'])} → {num(o['loss_last'])} (min {num(o['loss_min'])})"
        + (f"; validation loss {num(o['val_loss_last'])}" if o["val_loss_last"] is not None else ""),
        "",
        *_task_markdown(o.get("task")),
        "## Diagnoses",
        "",
    ]
    if report.diagnoses:
        out += [diagnoses_markdown(report.diagnoses), ""]
        for d in report.diagnoses:
            if d.resolved:
                continue
            out.append(f"- **{markdown_escape(d.headline())}**: {markdown_escape(d.message)}")
            if d.evidence:
                out.append(f"  - evidence: {markdown_escape(evidence_text(d.evidence))}")
            out += [f"  - try: {markdown_escape(s)}" for s in d.suggestions]
        out.append("")
    else:
        out += ["The advisors found nothing to report.", ""]
    out += ["## Per-layer summary (first → last logging step)", "", _layers_markdown(report), ""]
    return "\n".join(out)


def _task_markdown(task: dict[str, Any] | None) -> list[str]:
    """The task line of the overview (loss, output activation, targets, constant-prediction loss)."""
    if not task:
        return []
    parts = [f"loss {task['loss']}", f"output activation {task['output_activation'] or 'unknown'}"]
    if task["targets"]:
        parts.append(f"targets: {task['targets']}")
    if task["baseline_loss"] is not None:
        parts.append(f"a constant prediction scores {num(task['baseline_loss'])}")
    return ["Task: " + markdown_escape("; ".join(parts)), ""]


def comparison_markdown(comparison: Comparison) -> str:
    """Runs side by side: verdicts, final losses, and which problems appeared or disappeared."""
    runs = comparison.runs
    out = [
        "# nndiag comparison",
        "",
        "| # | run | verdict | steps | final loss | best val loss |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs):
        o = r.overview
        out.append(
            f"| {i} | {markdown_escape(r.name)} | {markdown_escape(r.verdict.headline)} | {o['optimizer_steps']} | "
            f"{num(o['loss_last'])} | {num(o['val_loss_min'])} |"
        )
    out += ["", f"## Problems against the baseline (run 0: {markdown_escape(runs[0].name)})", ""]
    for i, ch in enumerate(comparison.changes(), start=1):
        out.append(f"- run {i} ({markdown_escape(runs[i].name)}):")
        for label in ("appeared", "disappeared", "persisting"):
            items = ", ".join(markdown_escape(x) for x in ch[label]) or "none"
            out.append(f"  - {label}: {items}")
    keys = comparison.keys()
    if keys:
        out += ["", "## Diagnoses per run", "", "| problem | " + " | ".join(str(i) for i in range(len(runs))) + " |"]
        out.append("|---|" + "---|" * len(runs))
        for k in keys:
            cells = []
            for r in runs:
                d = comparison.cell(r, k)
                cells.append("" if d is None else f"{d.severity}{' (resolved)' if d.resolved else ''}")
            out.append(f"| {markdown_escape(key_text(k))} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
