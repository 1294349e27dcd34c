"""Shared construction-time validation for the adapters' keyword options.

Example:
    >>> from nndiag.integrations.options import build_config
    >>> build_config(None, {"histograms": True}).histograms
    True
    >>> build_config(None, {"histogram": True})
    Traceback (most recent call last):
    ...
    TypeError: unknown nndiag option(s) histogram; valid options: histograms, histogram_bins, ...

"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from nndiag.config import RecorderConfig


def build_config(config: RecorderConfig | None, overrides: dict[str, Any]) -> RecorderConfig:
    """``config`` (or the defaults) with ``overrides`` applied; unknown names raise ``TypeError``."""
    if config is not None and not isinstance(config, RecorderConfig):
        raise TypeError(f"config must be an nndiag.RecorderConfig, got {type(config).__name__}.")
    names = [f.name for f in fields(RecorderConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"unknown nndiag option(s) {', '.join(unknown)}; valid options: {', '.join(names)}.")
    return replace(config or RecorderConfig(), **overrides)


def clean_hparams(hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """Hyperparameters as a flat JSON-safe dict: nested mappings become ``outer.inner`` keys.

    Numbers, strings, booleans and ``None`` are kept; anything else is stored as its ``repr``
    (an optimizer class, a tensor; cut to 200 characters) so that a run store never holds pickled objects.

    Example:
        >>> clean_hparams({"lr": 0.1, "opt": {"name": "adam", "betas": (0.9, 0.99)}, "act": int})
        {'lr': 0.1, 'opt.name': 'adam', 'opt.betas': '(0.9, 0.99)', 'act': "<class 'int'>"}
    """
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                visit(f"{prefix}.{k}" if prefix else str(k), v)
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            text = repr(value)
            flat[prefix] = text if len(text) <= 200 else text[:197] + "..."

    visit("", dict(hparams or {}))
    return flat
