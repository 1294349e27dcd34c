"""Host-side finalisation: sufficient statistics from the device -> the recorded statistics.

The device sends only what cannot be computed later (sums, norms, counts); the
arithmetic that turns them into ``act_mean``, ``act_std``, ``dead_frac``, ``sat_frac``,
``update_ratio`` and ``grad_norm_total`` runs here, on nndiag's background thread.

Raw statistics (internal, never stored) per layer:

=============  ================================================================
``_n``         element count of the output
``_sum``       sum of the elements
``_sq``        L2 norm of the elements (``sqrt(sum x^2)``)
``_nonfinite`` NaN/Inf count
``_dead``      units whose maximum over the batch is <= 0
``_units``     number of units
``_min``       minimum (dead_frac applies to ReLU-family or non-negative outputs)
``_relu``      1 for ReLU-family modules (dead_frac always applies)
``_sat``       saturated element count
``_wb``        weight norm before the step (sampled mode: after)
``_wbs``       sampled mode: norm of the sampled elements before the step
``_delta``     ``||w_after - w_before||`` (sampled mode: over the sampled elements)
=============  ================================================================

Example:
    >>> from nndiag.stats.finalize import finalize_layer
    >>> out = finalize_layer({"_n": 4, "_sum": 0.0, "_sq": 2.0, "_nonfinite": 0, "_dead": 1, "_units": 2, "_relu": 1})
    >>> out
    {'act_mean': 0.0, 'act_std': 1.0, 'nonfinite': 0.0, 'dead_frac': 0.5}

"""

from __future__ import annotations

import math

from nndiag import quantities as Q

RAW_PREFIX = "_"


def finalize_layer(raw: dict[str, float]) -> dict[str, float]:
    """Turn one layer's raw statistics into recorded statistics (see the module docstring)."""
    out: dict[str, float] = {}
    n = raw.get("_n")
    if n is not None and "_sum" in raw:
        mean = raw["_sum"] / n if n > 0 else math.nan
        var = raw["_sq"] ** 2 / n - mean * mean if n > 0 else math.nan
        out[Q.ACT_MEAN] = mean
        out[Q.ACT_STD] = math.sqrt(max(var, 0.0)) if math.isfinite(var) else math.nan
        out[Q.NONFINITE] = float(raw.get("_nonfinite", 0.0))
    if "_dead" in raw and raw.get("_units", 0) > 0:
        applies = raw.get("_relu", 0) == 1 or raw.get("_min", -1.0) >= 0
        if applies:
            out[Q.DEAD_FRAC] = raw["_dead"] / raw["_units"]
    if "_sat" in raw and n:
        out[Q.SAT_FRAC] = raw["_sat"] / n
    if "_wb" in raw:
        out[Q.WEIGHT_NORM] = raw["_wb"]
        base = raw.get("_wbs", raw["_wb"])  # sampled mode: ratio on the sampled elements
        if "_delta" in raw:
            out[Q.UPDATE_RATIO] = raw["_delta"] / base if base > 0 else math.nan
    if raw.get("_gns_s", 0.0) > 0 and raw.get("_gns_g", 0.0) > 0:  # run-wide: gradient noise scale (B_simple)
        out[Q.GRAD_NOISE_SCALE] = raw["_gns_s"] / raw["_gns_g"]
    return out


def total_norm(norms: list[float]) -> float:
    """Global L2 norm from per-tensor norms: ``sqrt(sum n_i^2)``.

    Example:
        >>> total_norm([3.0, 4.0])
        5.0

    """
    return math.sqrt(sum(v * v for v in norms))
