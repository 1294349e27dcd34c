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
