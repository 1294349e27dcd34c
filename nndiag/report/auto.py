"""The post-run report as an ``on_close`` step of a session (the adapters install it).

:func:`write_after_run` writes ``nndiag-report.{html,md,json}`` into the run directory when the
session kept a run store and its config wants a report (``report=True``, or by default unless
``NNDIAG_REPORT=0``). A failing report costs one warning (site ``post-run report``), never the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nndiag.log import get_logger

if TYPE_CHECKING:
    from nndiag.session import Session


def write_after_run(session: Session) -> None:
    """``Session(on_close=[write_after_run])``: the report of the run that just closed."""
    if session.log_dir is None or session.pipeline.store is None or not session.config.wants_report:
        return
    session.guard.run("post-run report", _write, session.log_dir)


def _write(log_dir: Path) -> None:
    from nndiag.report import write  # looked up at call time (tests replace write_report)

    paths = write.write_report(log_dir)
    get_logger().info("nndiag: report %s", paths["html"])


__all__ = ["write_after_run"]
