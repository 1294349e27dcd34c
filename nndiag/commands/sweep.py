"""``nndiag sweep SOURCE``: advice for the next stage of a hyperparameter search.

SOURCE is an Optuna storage URL (``sqlite:///study.db``, ``postgresql://...``) with ``--study NAME``
(optional when the storage holds one study), an Optuna SQLite file, or a folder of nndiag runs
that logged their hyperparameters. Prints the best trials, border checks, the suggested next
range, the hyperparameters that matter, how diagnoses distribute over the space and grid
warnings; ``--json`` for machines, ``--html PATH`` for a page with the objective plotted
against each hyperparameter. See docs/sweep.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nndiag.commands import EXIT_OK
from nndiag.commands.textout import echo
from nndiag.jsonable import dumps


def register(sub: Any) -> None:
    """Add this sub-command parser to ``sub`` (``run`` is its handler)."""
    p = sub.add_parser("sweep", help="advise the next stage of a hyperparameter search (Optuna study or runs folder)")
    p.add_argument("source", help="Optuna storage URL (sqlite:///study.db) or SQLite file, or a folder of nndiag runs")
    p.add_argument("--study", default=None, help="Optuna study name (optional if the storage holds one study)")
    p.add_argument(
        "--objective", default=None, help="runs folder: run-wide stat to optimise (default val_loss, else loss)"
    )
    p.add_argument("--direction", choices=("minimize", "maximize"), default=None, help="runs folder (default minimize)")
    p.add_argument("--top", type=int, default=None, help="how many best trials to list (default max(3, 10%%))")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--html", default=None, metavar="PATH", help="also write an HTML page with one plot per parameter")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code."""
    from nndiag.sweep import analyze, load_sweep, render_html, render_text

    if args.top is not None and args.top < 1:
        raise ValueError(f"--top must be a positive number of trials, got {args.top}.")
    report = analyze(load_sweep(args.source, args.study, args.objective, args.direction), top=args.top)
    if args.html:
        out = Path(args.html)
        if out.parent and not out.parent.exists():
            raise FileNotFoundError(f"cannot write {out}: the folder {out.parent} does not exist; create it first.")
        out.write_text(render_html(report), encoding="utf-8")
    if args.json:
        doc = report.to_dict()
        doc["html"] = args.html
        print(dumps(doc, indent=2))
    else:
        echo(render_text(report))
        if args.html:
            echo(f"\nHTML page: {args.html}")
    return EXIT_OK
