"""``nndiag demo [--out DIR] [--epochs N]``: train a small model with an injected fault and show the recording."""

from __future__ import annotations

import argparse
from typing import Any

from nndiag.commands import EXIT_OK


def register(sub: Any) -> None:
    """Add this sub-command parser to ``sub`` (``run`` is its handler)."""
    p = sub.add_parser("demo", help="train a small model with an injected fault and show the recording")
    p.add_argument("--out", default="runs", help="parent folder of the TensorBoard/run-store logs (default: runs)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code."""
    from nndiag.demo.run import run_demo

    run_demo(args.out, epochs=args.epochs)
    return EXIT_OK
