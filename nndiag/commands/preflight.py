"""``nndiag preflight TARGET [--batch TARGET] [--loss LOSS] [--num-classes C] [--no-overfit] [--lr-find] ...``.

Runs :func:`nndiag.preflight` on a model your code builds, and prints the report.

``TARGET`` names a zero-argument callable as ``path/to/script.py:function`` or
``package.module:function``. It returns either

    * a model (``nn.Module``): then ``--batch`` names a second callable returning the batch; or
    * a tuple ``(model, batch)`` or ``(model, batch, loss_fn)``; or
    * a dict with ``model``, ``batch`` and optionally ``loss_fn`` and ``num_classes``.

The batch is a tensor (inputs only), ``(inputs, targets)`` or a dict (see ``docs/preflight.md``).
``--loss`` names the loss: ``cross_entropy``, ``nll``, ``mse``, ``l1``, ``bce``,
``bce_with_logits``, or another ``script.py:function``; it overrides one the callable returned.

Exit codes: 0 no warning or error (and the overfit check passed); 1 the preflight found a problem
at ``--fail-on`` level (default ``warning``; a failed overfit check counts as an error); 2 bad
input (missing file, a callable that raises or returns something else), with a one-line message.

Example:
    >>> from nndiag.cli import main
    >>> main(["preflight", "/nonexistent/model.py:make"])
    2
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from nndiag.commands import EXIT_OK, EXIT_PROBLEMS
from nndiag.commands.textout import echo
from nndiag.diagnosis import SEVERITIES
from nndiag.jsonable import dumps

LOSSES: dict[str, Callable[[], Any]] = {
    "cross_entropy": nn.CrossEntropyLoss,
    "nll": nn.NLLLoss,
    "mse": nn.MSELoss,
    "l1": nn.L1Loss,
    "bce": nn.BCELoss,
    "bce_with_logits": nn.BCEWithLogitsLoss,
}


def register(sub: Any) -> None:
    """Add this sub-command parser to ``sub`` (``run`` is its handler)."""
    p = sub.add_parser(
        "preflight",
        help="check an untrained model on one batch before training (activations, init, loss, overfit)",
        description=(
            "Check an untrained model before training: one forward pass (per-layer activation table and "
            "diagnoses), the initial loss, an overfit-one-batch check and optionally a learning-rate range test. "
            "TARGET is script.py:function or package.module:function, a zero-argument callable returning a model "
            "(then give --batch), a tuple (model, batch[, loss_fn]) or a dict with model, batch[, loss_fn, "
            "num_classes]. Exit 0: no problem; 1: a problem at --fail-on level (default warning); 2: bad input."
        ),
    )
    p.add_argument("target", metavar="TARGET", help="script.py:function or package.module:function")
    p.add_argument("--batch", metavar="TARGET", help="a zero-argument callable returning the batch")
    p.add_argument("--loss", metavar="LOSS", help=f"{', '.join(LOSSES)}, or script.py:function")
    p.add_argument("--num-classes", type=int, help="classes of a softmax classifier (inferred for cross-entropy)")
    p.add_argument("--no-overfit", action="store_true", help="skip the overfit-one-batch check")
    p.add_argument("--overfit-steps", type=int, default=500, help="most steps of the overfit check (default 500)")
    p.add_argument("--lr-find", action="store_true", help="also run Lightning's learning-rate range test")
    p.add_argument("--config", help="advisor thresholds: a TOML ([advisor] table or top level) or JSON file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--fail-on",
        choices=SEVERITIES,
        default="warning",
        help="exit 1 if a diagnosis is this severe or worse (default: warning)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code."""
    from nndiag.preflight import OverfitConfig, preflight

    spec = _spec(_call(args.target), args.target)
    if args.batch:
        spec["batch"] = _call(args.batch)
    if "batch" not in spec:
        raise ValueError(
            f"{args.target} returned only a model; pass --batch script.py:make_batch, or return (model, batch)."
        )
    if args.loss:
        spec["loss_fn"] = _loss(args.loss)
    if args.num_classes is not None:
        spec["num_classes"] = args.num_classes
    if args.overfit_steps < 1:
        raise ValueError(f"--overfit-steps must be >= 1, got {args.overfit_steps}.")
    if args.config and not Path(args.config).is_file():
        raise ValueError(f"--config {args.config}: no such file.")
    report = preflight(
        spec["model"],
        spec["batch"],
        spec.get("loss_fn"),
        spec.get("num_classes"),
        overfit=False if args.no_overfit else OverfitConfig(steps=args.overfit_steps),
        lr_find=args.lr_find,
        advisor_config=args.config,
    )
    if args.json:
        print(dumps(report.to_dict(), indent=2))
    else:
        echo(report)
    return EXIT_PROBLEMS if report.fails(args.fail_on) else EXIT_OK


def _spec(value: Any, target: str) -> dict[str, Any]:
    """``{"model": ..., "batch": ..., ...}`` from what the callable returned."""
    if isinstance(value, nn.Module):
        return {"model": value}
    if isinstance(value, dict) and isinstance(value.get("model"), nn.Module):
        unknown = sorted(set(value) - {"model", "batch", "loss_fn", "num_classes"})
        if unknown:
            raise ValueError(
                f"{target} returned a dict with unknown keys {unknown}; use model, batch, loss_fn, num_classes."
            )
        return dict(value)
    if isinstance(value, tuple) and len(value) in (2, 3) and isinstance(value[0], nn.Module):
        return dict(zip(("model", "batch", "loss_fn"), value, strict=False))
    raise ValueError(
        f"{target} returned {type(value).__name__}; expected an nn.Module, a tuple (model, batch[, loss_fn]) "
        "or a dict with 'model' and 'batch'."
    )


def _loss(name: str) -> Any:
    if name in LOSSES:
        return LOSSES[name]()
    if ":" in name:
        fn = _resolve(name)
        if not callable(fn):
            raise ValueError(f"--loss {name} is not callable.")
        return fn
    raise ValueError(f"--loss {name!r}: use one of {', '.join(LOSSES)}, or script.py:function.")


def _call(target: str) -> Any:
    """Resolve ``target`` and call it with no arguments; its errors become one-line ValueErrors."""
    fn = _resolve(target)
    if not callable(fn):
        raise ValueError(f"{target} is a {type(fn).__name__}, not a callable; name a function that returns it.")
    try:
        return fn()
    except Exception as exc:
        raise ValueError(f"{target}() raised {type(exc).__name__}: {exc}") from exc


def _resolve(target: str) -> Any:
    """The object ``script.py:name`` or ``package.module:name`` refers to."""
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise ValueError(f"{target!r}: expected script.py:function or package.module:function.")
    module = _load_file(where) if where.endswith(".py") or "/" in where or "\\" in where else _import(where)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{where} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    return obj


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ValueError(f"cannot import {name} ({exc}); pass a file as path/to/script.py:function.") from exc
    except Exception as exc:
        raise ValueError(f"importing {name} raised {type(exc).__name__}: {exc}") from exc


def _load_file(path: str) -> Any:
    """Execute a Python file as a fresh module (its folder is importable while it runs)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{path}: no such file; pass path/to/script.py:function.")
    spec = importlib.util.spec_from_file_location(f"nndiag_preflight_{uuid.uuid4().hex}", file)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} is not a Python file.")
    module = importlib.util.module_from_spec(spec)
    folder = str(file.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ValueError(f"running {path} raised {type(exc).__name__}: {exc}") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module
