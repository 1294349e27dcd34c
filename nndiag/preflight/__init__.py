"""Preflight: the lecture's babysitting checks on an untrained model, before training starts.

``nndiag.preflight(model, batch, loss_fn)`` runs one recorded forward pass (the per-layer
activation table and the diagnoses it supports), the overfit-one-batch check and, optionally,
Lightning's learning-rate range test. See ``docs/preflight.md``.

Example:
    >>> from nndiag.preflight import PreflightReport, preflight
    >>> callable(preflight), PreflightReport.__name__
    (True, 'PreflightReport')
"""

from nndiag.preflight.api import preflight
from nndiag.preflight.checks import PREFLIGHT_CODES
from nndiag.preflight.lightning import preflight_at_fit_start
from nndiag.preflight.lr_range import LRFindConfig, LRFindResult, find_lr
from nndiag.preflight.noise_scale import NoiseScaleProbe, batch_size_probe
from nndiag.preflight.overfit import OverfitConfig, OverfitResult, check_overfit
from nndiag.preflight.report import PreflightReport

__all__ = [
    "PREFLIGHT_CODES",
    "LRFindConfig",
    "LRFindResult",
    "NoiseScaleProbe",
    "OverfitConfig",
    "OverfitResult",
    "PreflightReport",
    "batch_size_probe",
    "check_overfit",
    "find_lr",
    "preflight",
    "preflight_at_fit_start",
]
