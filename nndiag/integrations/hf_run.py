"""Helpers of :class:`~nndiag.integrations.transformers.NndiagCallback`: the Trainer, run directory, saved state.

Example:
    >>> from types import SimpleNamespace
    >>> args = SimpleNamespace(output_dir="out", logging_dir="out/logs")
    >>> str(run_dir(None, args, None)), str(run_dir("elsewhere", args, None))
    ('out/logs', 'elsewhere')
    >>> json_safe_args({"schedule": 5, "fn": print, "halt_on": ["nonfinite_loss"]})
    {'schedule': 5, 'halt_on': ['nonfinite_loss']}
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nndiag.guard import NndiagInternalWarning
from nndiag.integrations.monitor import next_version_dir
from nndiag.options import clean_hparams
from nndiag.resume import STORE_NAME, ResumeState

STATE_KEY = "nndiag_resume"  # attribute name of the callback's saved state in trainer_state.json
CALLBACK_NAME = "NndiagCallback"  # the key the Trainer stores the callback's state under


def find_trainer() -> Any:
    """The ``transformers.Trainer`` whose callback handler is calling us (from the call stack), else ``None``."""
    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None


def saved_state(state: Any) -> ResumeState | None:
    """The callback state of the checkpoint the Trainer resumed from (``None`` on a fresh run)."""
    if int(getattr(state, "global_step", 0) or 0) <= 0:
        return None
    saved = (getattr(state, "stateful_callbacks", None) or {}).get(CALLBACK_NAME)
    if isinstance(saved, list):
        saved = saved[0] if saved else None
    if not isinstance(saved, Mapping):
        return None
    return parse_state((saved.get("attributes") or {}).get(STATE_KEY))


def parse_state(value: Any) -> ResumeState | None:
    """A saved callback state as a :class:`ResumeState`; an unreadable one gives a warning and ``None``."""
    if value is None:
        return None
    try:
        return ResumeState.from_state_dict(dict(value) if isinstance(value, Mapping) else value)
    except (TypeError, ValueError) as exc:
        warnings.warn(
            f"nndiag: ignoring an unreadable callback state in the checkpoint: {exc}.",
            NndiagInternalWarning,
            stacklevel=3,
        )
        return None


def run_dir(explicit: str | None, args: Any, resume: ResumeState | None) -> Path:
    """Where this run is written (see the module docstring); a resumed run continues its own directory."""
    if resume is not None and resume.continued_dir() is not None:
        return Path(str(resume.continued_dir()))
    base = explicit or getattr(args, "logging_dir", None) or os.environ.get("TENSORBOARD_LOGGING_DIR")
    if not base:
        stamp = time.strftime("%b%d_%H-%M-%S") + "_" + socket.gethostname()
        base = os.path.join(getattr(args, "output_dir", None) or "trainer_output", "runs", stamp)
    path = Path(os.path.expanduser(str(base)))
    return next_version_dir(path) if (path / STORE_NAME).exists() else path


def run_meta(args: Any, model: Any) -> dict[str, Any]:
    """The run store's metadata: framework, versions, accumulation, precision, ``args`` as hparams."""
    import transformers

    to_dict = getattr(args, "to_sanitized_dict", None)
    hparams = to_dict() if callable(to_dict) else {}
    precision = "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "32"
    return {
        "framework": "transformers",
        "transformers_version": transformers.__version__,
        "accumulate_grad_batches": getattr(args, "gradient_accumulation_steps", None),
        "precision": precision,
        "hparams": clean_hparams(hparams),
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
    }


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (``trainer_state.json`` is written with ``json.dumps``)."""
    return json.loads(json.dumps(value, default=lambda o: float(o) if hasattr(o, "__float__") else str(o)))


def json_safe_args(args: dict[str, Any]) -> dict[str, Any]:
    """The constructor options that survive JSON (a callable schedule or a config object does not)."""
    safe = {}
    for key, value in args.items():
        try:
            if json.loads(json.dumps(value)) == value:
                safe[key] = value
        except (TypeError, ValueError):
            continue
    return safe
