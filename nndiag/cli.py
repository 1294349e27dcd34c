"""The ``nndiag`` command line.

Commands:
    * ``nndiag demo [--out DIR] [--epochs N]``: train a small model with an injected fault,
      print what nndiag recorded and where to look.
    * ``nndiag show RUN_DIR [--json]``: summarise a recorded run (finished or killed).
    * ``nndiag diagnose RUN_DIR [--config FILE] [--num-classes C] [--json] [--fail-on LEVEL]``:
      re-run the advisors on a stored run (other thresholds from FILE) and print the diagnoses.

Exit codes: 0 success; 1 ``diagnose --fail-on`` found an open diagnosis that severe; 2 bad
usage or bad input (missing directory, not a run, damaged store, bad config file), with a
one-line message on stderr and no traceback.

Example:
    >>> from nndiag.cli import main
    >>> main(["show", "/nonexistent/run"])
    2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from nndiag._version import __version__
from nndiag.store.reader import CorruptRunError, RunNotFoundError, load_run
from nndiag.summary import ACTIVATION_STATS, PARAMETER_STATS, layer_summary, render_text, run_overview

EXIT_OK = 0
EXIT_PROBLEMS = 1  # diagnose --fail-on: an open diagnosis at or above the level
EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nndiag", description="Per-layer training diagnostics for PyTorch.")
    p.add_argument("--version", action="version", version=f"nndiag {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small model with an injected fault and show the recording")
    demo.add_argument("--out", default="runs", help="parent folder of the TensorBoard/run-store logs (default: runs)")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    diag = sub.add_parser("diagnose", help="re-run the advisors on a recorded run and print the diagnoses")
    diag.add_argument("run_dir", help="the run's log directory (holding nndiag.sqlite)")
    diag.add_argument("--config", help="advisor thresholds: a TOML ([advisor] table or top level) or JSON file")
    diag.add_argument("--num-classes", type=int, help="classes of a softmax classifier (for initial_loss_off)")
    diag.add_argument("--json", action="store_true", help="machine-readable output")
    diag.add_argument(
        "--fail-on", choices=("info", "warning", "error"), help="exit 1 if an open diagnosis is this severe or worse"
    )
    show = sub.add_parser("show", help="summarise a recorded run")
    show.add_argument("run_dir", help="the run's log directory (holding nndiag.sqlite)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _show(run_dir: str, as_json: bool) -> int:
    run = load_run(run_dir)
    overview = run_overview(run.history)
    summary = layer_summary(run.history, run.facts)
    status = run.meta.get("status", "unknown")
    if as_json:
        doc = {
            "run": str(run.path),
            "status": status,
            "overview": overview,
            "layers": summary.to_dict(orient="index") if not summary.empty else {},
            "diagnoses": [d.to_dict() for d in run.diagnoses],
        }
        print(json.dumps(_clean(doc), indent=2))
        return EXIT_OK
    note = (
        "" if status == "finished" else f" (status: {status}; the run did not finish cleanly, showing what was stored)"
    )
    print(f"{run.path}{note}")
    loss = (
        f"; loss {overview['loss_first']:.4g} -> {overview['loss_last']:.4g}"
        if overview["loss_first"] is not None
        else ""
    )
    print(
        f"{overview['optimizer_steps']} optimizer steps, {overview['logging_steps']} logging steps, "
        f"{overview['layers']} layers{loss}"
    )
    if not summary.empty:
        print("\nActivations (first -> last logging step):")
        print(render_text(summary, ACTIVATION_STATS))
        print("\nParameters (first -> last logging step):")
        print(render_text(summary, PARAMETER_STATS))
    print(f"\n{len(run.diagnoses)} {'diagnosis' if len(run.diagnoses) == 1 else 'diagnoses'}")
    for d in run.diagnoses:
        print(f"  [{d.severity}] {d.code} at step {d.step} ({d.layer or 'run'}): {d.message}")
    return EXIT_OK


def _diagnose(run_dir: str, config: str | None, num_classes: int | None, as_json: bool, fail_on: str | None) -> int:
    from nndiag.advisor import SEVERITY_ORDER, Advisor
    from nndiag.rules.config import AdvisorConfig

    run = load_run(run_dir)
    cfg = AdvisorConfig.from_file(config) if config else AdvisorConfig()
    facts = dict(run.facts)
    if num_classes is not None:
        facts["num_classes"] = num_classes
    diagnoses = Advisor(cfg).replay(run.history, facts)
    if as_json:
        print(json.dumps(_clean({"run": str(run.path), "diagnoses": [d.to_dict() for d in diagnoses]}), indent=2))
    else:
        print(f"{run.path}: {len(diagnoses)} {'diagnosis' if len(diagnoses) == 1 else 'diagnoses'}")
        for d in diagnoses:
            state = " (resolved)" if d.resolved else ""
            print(f"  [{d.severity}] {d.code}{f' [{d.layer}]' if d.layer else ''} at step {d.step}{state}: {d.message}")
            for fix in d.suggestions:
                print(f"      - {fix}")
    open_levels = [SEVERITY_ORDER[d.severity] for d in diagnoses if not d.resolved]
    if fail_on is not None and any(level <= SEVERITY_ORDER[fail_on] for level in open_levels):
        return EXIT_PROBLEMS
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from nndiag.demo.run import run_demo

            run_demo(args.out, epochs=args.epochs)
            return EXIT_OK
        if args.command == "diagnose":
            return _diagnose(args.run_dir, args.config, args.num_classes, args.json, args.fail_on)
        return _show(args.run_dir, args.json)
    except (RunNotFoundError, CorruptRunError, ValueError, OSError) as exc:
        print(f"nndiag: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
