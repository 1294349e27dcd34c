"""The ``nndiag`` command line.

Commands (one module each in :mod:`nndiag.commands`):
    * ``nndiag demo [--out DIR] [--epochs N]``: train a small model with an injected fault,
      print what nndiag recorded and where to look.
    * ``nndiag show RUN_DIR [--json]``: summarise a recorded run (finished or killed).
    * ``nndiag diagnose RUN_DIR [--config FILE] [--num-classes C] [--json] [--fail-on LEVEL]``:
      re-run the advisors on a stored run (other thresholds from FILE) and print the diagnoses.
    * ``nndiag report RUN_DIR [RUN_DIR ...] [--out DIR] [--format html,md,json] [--fail-on LEVEL]``:
      the post-run report of one run, or a comparison of several.
    * ``nndiag preflight TARGET [--batch TARGET] [--loss LOSS] ...``: checks before training (see
      :mod:`nndiag.commands.preflight`).
    * ``nndiag sweep SOURCE [--study NAME] [--json] [--html PATH]``: advice on a hyperparameter
      search (an Optuna study or a folder of runs; see :mod:`nndiag.commands.sweep`).

Exit codes: 0 success; 1 ``--fail-on`` found an open diagnosis that severe; 2 bad usage or bad
input (missing directory, not a run, damaged store, bad config file), with a one-line message
on stderr and no traceback.

Example:
    >>> from nndiag.cli import main
    >>> main(["show", "/nonexistent/run"])
    2
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from nndiag._version import __version__
from nndiag.commands import EXIT_BAD_INPUT, EXIT_OK, EXIT_PROBLEMS
from nndiag.store.reader import CorruptRunError, RunNotFoundError

__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "EXIT_PROBLEMS", "entry", "main"]

# sub-command modules under nndiag.commands, in the order `nndiag --help` lists them
COMMANDS = ("demo", "show", "diagnose", "report", "preflight", "sweep")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nndiag", description="Per-layer training diagnostics for PyTorch.")
    p.add_argument("--version", action="version", version=f"nndiag {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"nndiag.commands.{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (RunNotFoundError, CorruptRunError, ValueError, OSError) as exc:
        print(f"nndiag: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
