"""Post-run reports: one run (HTML, Markdown, JSON) or a comparison of several.

Example (``write_report`` returns the paths it wrote)::

    from nndiag.report import write_report
    write_report("runs/lightning_logs/version_0")
    # {'html': PosixPath('runs/lightning_logs/version_0/nndiag-report.html'), 'md': ..., 'json': ...}

See ``docs/report.md`` for the pictures, the JSON schema and the exit codes of ``nndiag report``.
"""

from nndiag.report.compare import Comparison
from nndiag.report.model import RunReport, build_report
from nndiag.report.schema import COMPARISON_SCHEMA, REPORT_SCHEMA, REPORT_SCHEMA_VERSION
from nndiag.report.verdict import Verdict
from nndiag.report.write import FORMATS, write_comparison, write_report

__all__ = [
    "COMPARISON_SCHEMA",
    "FORMATS",
    "REPORT_SCHEMA",
    "REPORT_SCHEMA_VERSION",
    "Comparison",
    "RunReport",
    "Verdict",
    "build_report",
    "write_comparison",
    "write_report",
]
