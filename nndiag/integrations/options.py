"""Compatibility names: the adapters' option validation now lives in :mod:`nndiag.options`.

Example:
    >>> from nndiag.integrations.options import build_config
    >>> build_config(None, {"histograms": True}).histograms
    True
"""

from nndiag.options import DiagnosticsOptions, build_config, clean_hparams

__all__ = ["DiagnosticsOptions", "build_config", "clean_hparams"]
