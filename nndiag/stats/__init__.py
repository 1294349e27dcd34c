"""Pure on-device statistics (tensors in, tensors out) and their host-side finalisation."""

from nndiag.stats.activations import SATURATION_RULES, as_float, saturated_count, sufficient_stats, unit_max
from nndiag.stats.finalize import finalize_layer, total_norm
from nndiag.stats.histogram import histogram
from nndiag.stats.params import norms

__all__ = [
    "SATURATION_RULES",
    "as_float",
    "finalize_layer",
    "histogram",
    "norms",
    "saturated_count",
    "sufficient_stats",
    "total_norm",
    "unit_max",
]
