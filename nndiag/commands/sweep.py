"""``nndiag sweep``: placeholder while issue #5 is being built (replaced by its implementation)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add this sub-command parser to ``sub`` (``run`` is its handler)."""
    p = sub.add_parser("sweep", help="(in development)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code."""
    raise ValueError("nndiag sweep is not implemented yet")
