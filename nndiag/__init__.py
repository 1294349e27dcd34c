"""nndiag: per-layer training diagnostics for PyTorch and Lightning.

Example:
    >>> import nndiag
    >>> {"DiagnosticsCallback", "Monitor", "Diagnosis", "load_run"} <= set(nndiag.__all__)
    True

"""

from typing import Any

from nndiag._version import __version__
from nndiag.config import RecorderConfig
from nndiag.diagnosis import Diagnosis
from nndiag.integrations.monitor import Monitor
from nndiag.preflight import NoiseScaleProbe, PreflightReport, batch_size_probe, preflight
from nndiag.remedy import Remedy, RemedyConfig
from nndiag.rules.config import AdvisorConfig
from nndiag.store.reader import CorruptRunError, LoadedRun, RunNotFoundError, load_run

__all__ = [
    "AdvisorConfig",
    "CorruptRunError",
    "Diagnosis",
    "DiagnosticsCallback",
    "LoadedRun",
    "Monitor",
    "NoiseScaleProbe",
    "PreflightReport",
    "RecorderConfig",
    "Remedy",
    "RemedyConfig",
    "RunNotFoundError",
    "__version__",
    "batch_size_probe",
    "load_run",
    "preflight",
]


def __getattr__(name: str) -> Any:
    # Lightning is imported only when the callback is used (it takes seconds to import).
    if name == "DiagnosticsCallback":
        from nndiag.integrations.lightning import DiagnosticsCallback

        return DiagnosticsCallback
    raise AttributeError(f"module 'nndiag' has no attribute {name!r}")
