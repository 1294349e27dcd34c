"""Thin adapters over :class:`nndiag.session.Session`: Lightning callback and plain-loop Monitor.

``DiagnosticsCallback`` is imported lazily (importing Lightning takes seconds).
"""

from typing import Any

from nndiag.integrations.monitor import Monitor

__all__ = ["DiagnosticsCallback", "Monitor"]


def __getattr__(name: str) -> Any:
    if name == "DiagnosticsCallback":
        from nndiag.integrations.lightning import DiagnosticsCallback

        return DiagnosticsCallback
    raise AttributeError(name)
