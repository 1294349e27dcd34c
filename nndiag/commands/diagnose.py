"""``nndiag diagnose RUN_DIR [--config FILE] [--num-classes C] [--json] [--fail-on LEVEL]``.

Re-runs the advisors on a stored run (other thresholds from FILE) and prints the diagnoses.
"""

from __future__ import annotations

import argparse
from typing import Any

from nndiag.advisor import fails
from nndiag.commands import EXIT_OK, EXIT_PROBLEMS
from nndiag.commands.textout import echo
from nndiag.diagnosis import SEVERITIES
from nndiag.jsonable import dumps
from nndiag.store.reader import load_run


def add_fail_on(p: argparse.ArgumentParser) -> None:
    """The ``--fail-on LEVEL`` option shared by ``diagnose`` and ``report``."""
    p.add_argument("--fail-on", choices=SEVERITIES, help="exit 1 if an open diagnosis is this severe or worse")


def register(sub: Any) -> None:
    """Add this sub-command parser to ``sub`` (``run`` is its handler)."""
    p = sub.add_parser("diagnose", help="re-run the advisors on a recorded run and print the diagnoses")
    p.add_argument("run_dir", help="the run's log directory (holding nndiag.sqlite)")
    p.add_argument("--config", help="advisor thresholds: a TOML ([advisor] table or top level) or JSON file")
    p.add_argument("--num-classes", type=int, help="classes of a softmax classifier (for initial_loss_off)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_fail_on(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code."""
    from nndiag.advisor import Advisor
    from nndiag.rules.config import AdvisorConfig

    loaded = load_run(args.run_dir)
    cfg = AdvisorConfig.from_file(args.config) if args.config else AdvisorConfig()
    facts = dict(loaded.facts)
    if args.num_classes is not None:
        facts["num_classes"] = args.num_classes
    diagnoses = Advisor(cfg).replay(loaded.history, facts)
    if args.json:
        print(dumps({"run": str(loaded.path), "diagnoses": [d.to_dict() for d in diagnoses]}, indent=2))
    else:
        echo(f"{loaded.path}: {len(diagnoses)} {'diagnosis' if len(diagnoses) == 1 else 'diagnoses'}")
        for d in diagnoses:
            echo(f"  {d.one_line()}")
            for fix in d.suggestions:
                echo(f"      - {fix}")
    return EXIT_PROBLEMS if fails(diagnoses, args.fail_on) else EXIT_OK
