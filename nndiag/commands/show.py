"""``nndiag show RUN_DIR [--json]``: summarise a recorded run (finished or killed)."""

from __future__ import annotations

import argparse
from typing import Any

from nndiag.commands import EXIT_OK
from nndiag.commands.textout import echo
from nndiag.jsonable import dumps
from nndiag.store.reader import load_run
from nndiag.summary import ACTIVATION_STATS, PARAMETER_STATS, layer_summary, render_text, run_overview


def register(sub: Any) -> None:
    """Add this sub-command parser to ``sub`` (``run`` is its handler)."""
    p = sub.add_parser("show", help="summarise a recorded run")
    p.add_argument("run_dir", help="the run's log directory (holding nndiag.sqlite)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code."""
    loaded = load_run(args.run_dir)
    overview = run_overview(loaded.history)
    summary = layer_summary(loaded.history, loaded.facts)
    status = loaded.meta.get("status", "unknown")
    if args.json:
        doc = {
            "run": str(loaded.path),
            "status": status,
            "overview": overview,
            "layers": summary.to_dict(orient="index") if not summary.empty else {},
            "diagnoses": [d.to_dict() for d in loaded.diagnoses],
        }
        print(dumps(doc, indent=2))
        return EXIT_OK
    note = (
        "" if status == "finished" else f" (status: {status}; the run did not finish cleanly, showing what was stored)"
    )
    echo(f"{loaded.path}{note}")
    loss = (
        f"; loss {overview['loss_first']:.4g} -> {overview['loss_last']:.4g}"
        if overview["loss_first"] is not None
        else ""
    )
    echo(
        f"{overview['optimizer_steps']} optimizer steps, {overview['logging_steps']} logging steps, "
        f"{overview['layers']} layers{loss}"
    )
    if not summary.empty:
        echo("\nActivations (first -> last logging step):")
        echo(render_text(summary, ACTIVATION_STATS))
        echo("\nParameters (first -> last logging step):")
        echo(render_text(summary, PARAMETER_STATS))
    echo(f"\n{len(loaded.diagnoses)} {'diagnosis' if len(loaded.diagnoses) == 1 else 'diagnoses'}")
    for d in loaded.diagnoses:
        echo(f"  {d.one_line()}")
    return EXIT_OK
