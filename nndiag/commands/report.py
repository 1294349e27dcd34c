"""``nndiag report RUN_DIR [RUN_DIR ...] [--out DIR] [--format html,md,json] [--fail-on LEVEL]``.

One RUN_DIR: its report (``nndiag-report.html``, ``.md``, ``.json``), written into the run's
directory unless ``--out`` says otherwise. Several: a comparison against the first
(``nndiag-comparison.*``, in ``--out`` or the current directory). The paths written are printed.

Exit codes: 0 written; 1 with ``--fail-on LEVEL`` when an open diagnosis of any run given is
that severe or worse (the report is still written); 2 bad input (missing directory, not a run,
damaged store, unwritable output) with a one-line message.
"""

from __future__ import annotations

import argparse
from typing import Any

from nndiag.advisor import fails
from nndiag.commands import EXIT_OK, EXIT_PROBLEMS
from nndiag.commands.diagnose import add_fail_on
from nndiag.commands.textout import echo


def register(sub: Any) -> None:
    """Add this sub-command parser to ``sub`` (``run`` is its handler)."""
    p = sub.add_parser(
        "report",
        help="write the post-run report of a run (HTML, Markdown, JSON), or compare several runs",
        description="One run: its report. Several runs: a comparison against the first.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run's log directory (holding nndiag.sqlite)")
    p.add_argument("--out", help="output directory (default: the run's directory; for a comparison: .)")
    p.add_argument("--format", default="html,md,json", help="comma-separated: html, md, json (default: all three)")
    add_fail_on(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code."""
    from nndiag.report.model import build_report
    from nndiag.report.write import parse_formats, write_comparison, write_report

    formats = parse_formats(args.format)
    reports = [build_report(path) for path in args.run_dirs]
    if len(reports) == 1:
        written = write_report(reports[0], args.out, formats)
    else:
        written = write_comparison(reports, args.out or ".", formats)
    for r in reports:
        echo(f"{r.name}: {r.verdict.headline}")
    for fmt, path in written.items():
        echo(f"{fmt}: {path}")
    return EXIT_PROBLEMS if any(fails(r.diagnoses, args.fail_on) for r in reports) else EXIT_OK
