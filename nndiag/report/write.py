"""Write reports to disk: :func:`write_report` (one run) and :func:`write_comparison` (several).

Rendering draws the pictures one by one; when that takes more than a second and stderr is a
terminal, a progress bar shows it (``tqdm`` with a delay).

Example:
    >>> import tempfile, numpy as np
    >>> from nndiag.rows import Rows
    >>> from nndiag.store.writer import RunStore
    >>> d = tempfile.mkdtemp()
    >>> s = RunStore(d); s.write_rows(Rows(np.array([0, 1]), ["", ""], ["loss"] * 2, np.array([2.3, 2.1]))); s.close()
    >>> paths = write_report(d, formats=("md", "json"))
    >>> sorted(p.name for p in paths.values())
    ['nndiag-report.json', 'nndiag-report.md']
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from nndiag import quantities as Q
from nndiag.render.figure import img_tag
from nndiag.report.compare import Comparison
from nndiag.report.figures import overlay_figure
from nndiag.report.html_compare import render_comparison_html
from nndiag.report.html_run import RenderedPicture, render_run_html
from nndiag.report.json_doc import comparison_document, run_document
from nndiag.report.markdown import comparison_markdown, run_markdown
from nndiag.report.model import RunReport, build_report
from nndiag.report.pictures import pictures

FORMATS = ("html", "md", "json")
REPORT_STEM = "nndiag-report"
COMPARISON_STEM = "nndiag-comparison"


def parse_formats(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"html,md"`` or ``["html", "md"]`` -> ``("html", "md")``, checked.

    Example:
        >>> parse_formats("html, json")
        ('html', 'json')
        >>> parse_formats("pdf")
        Traceback (most recent call last):
        ...
        ValueError: unknown report format 'pdf'; choose from html, md, json (comma-separated, e.g. html,json).
    """
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    for item in items:
        if item not in FORMATS:
            raise ValueError(
                f"unknown report format {item!r}; choose from {', '.join(FORMATS)} (comma-separated, e.g. html,json)."
            )
    if not items:
        raise ValueError(f"no report format given; choose from {', '.join(FORMATS)}.")
    return tuple(dict.fromkeys(items))


def _progress(total: int, desc: str) -> object:
    from tqdm.auto import tqdm

    # shown only when drawing takes more than a second, and only on a terminal
    return tqdm(total=total, desc=desc, delay=1.0, disable=None, file=sys.stderr, leave=False, unit="figure")


def draw_pictures(report: RunReport) -> list[RenderedPicture]:
    """Draw the run's pictures (skipping those without data) with a progress bar for long renders."""
    todo = pictures(report)
    bar = _progress(len(todo), "nndiag report")
    out: list[RenderedPicture] = []
    try:
        for pic in todo:
            fig = pic.draw()
            if fig is not None:
                out.append((pic.title, pic.caption, img_tag(fig, pic.title)))
            bar.update(1)  # type: ignore[attr-defined]
    finally:
        bar.close()  # type: ignore[attr-defined]
    return out


def _write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: readers never see a half-written report.

    The temporary file is created new (``O_CREAT | O_EXCL``, random name: an existing file or link is
    never opened), so a link planted in a run folder cannot redirect the write; the final rename
    replaces a link at ``path`` itself rather than writing through it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_report(
    run: str | Path | RunReport, out_dir: str | Path | None = None, formats: Sequence[str] = FORMATS
) -> dict[str, Path]:
    """Write the report of one run; returns ``{format: path}``.

    Args:
        run: the run's log directory (or an already built :class:`RunReport`).
        out_dir: where to write ``nndiag-report.{html,md,json}``; default: the run's directory.
        formats: any of ``html``, ``md``, ``json``.

    """
    formats = parse_formats(formats)
    report = run if isinstance(run, RunReport) else build_report(run)
    out = Path(out_dir) if out_dir is not None else report.path
    written: dict[str, Path] = {}
    if "html" in formats:
        written["html"] = _write(out / f"{REPORT_STEM}.html", render_run_html(report, draw_pictures(report)))
    if "md" in formats:
        written["md"] = _write(out / f"{REPORT_STEM}.md", run_markdown(report))
    if "json" in formats:
        written["json"] = _write(
            out / f"{REPORT_STEM}.json", json.dumps(run_document(report), indent=2, allow_nan=False) + "\n"
        )
    return written


def write_comparison(
    runs: Sequence[str | Path | RunReport], out_dir: str | Path = ".", formats: Sequence[str] = FORMATS
) -> dict[str, Path]:
    """Write the comparison of several runs (the first is the baseline); returns ``{format: path}``."""
    formats = parse_formats(formats)
    if len(runs) < 2:
        raise ValueError("a comparison needs at least two runs; pass one run to get its report.")
    comparison = Comparison([r if isinstance(r, RunReport) else build_report(r) for r in runs])
    out = Path(out_dir)
    written: dict[str, Path] = {}
    if "html" in formats:
        curves = []
        for i, r in enumerate(comparison.runs):
            loss, val = r.series(Q.LOSS), r.series(Q.VAL_LOSS)
            curves.append(
                (
                    f"{i}: {r.name}",
                    loss.index.to_numpy(),
                    loss.to_numpy(dtype=float),
                    val.index.to_numpy() if len(val) else None,
                    val.to_numpy(dtype=float) if len(val) else None,
                )
            )
        overlay = img_tag(overlay_figure(curves), "loss curves overlaid") if any(len(c[1]) for c in curves) else ""
        written["html"] = _write(out / f"{COMPARISON_STEM}.html", render_comparison_html(comparison, overlay))
    if "md" in formats:
        written["md"] = _write(out / f"{COMPARISON_STEM}.md", comparison_markdown(comparison))
    if "json" in formats:
        doc = comparison_document(comparison)
        written["json"] = _write(out / f"{COMPARISON_STEM}.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return written
