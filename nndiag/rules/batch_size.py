"""Batch-size advice from the gradient noise scale (McCandlish et al. 2018; docs/noise_scale.md).

The recorder measures per-step unbiased estimates of ``tr(Σ)`` (``gns_trace``) and ``|G|²``
(``gns_grad_sq``) where two batch sizes exist (DDP ranks, gradient accumulation). The rule takes
the ratio of their means over the last logging steps, ``B_noise``, with a delta-method standard
error, and compares the batch per optimizer step with it. Steps to reach a loss scale like
``1 + B_noise / B`` and samples like ``1 + B / B_noise``: far below ``B_noise`` most of each step
is noise, far above it most of the compute buys little. Quiet when the estimate is too noisy.

Example:
    >>> import pandas as pd
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> rows = [(s, "", st, v) for s in range(40) for st, v in
    ...         (("gns_trace", 2000.0 + 100 * (s % 3)), ("gns_grad_sq", 1.0), ("batch_size", 32.0))]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> [d.message[:44] for d in batch_size_advice(RunView(h), AdvisorConfig())]
    ['The gradient noise scale is ~2,100 samples (']
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView, finite


@dataclass(frozen=True)
class BatchSizeThresholds:
    """When the batch is far enough from the gradient noise scale, and the estimate good enough, to advise."""

    batch_advice_factor: float = 4.0  # advise when the batch is below B_noise / 4 or above 4 B_noise (steps or
    # samples then >= 1.25x their minimum: S = S_min (1 + B_noise/B), E = E_min (1 + B/B_noise)) ...
    batch_advice_window: int = 30  # ... with B_noise from the means over the last 30 logging steps' estimates ...
    batch_advice_min_estimates: int = 10  # ... of which at least 10 ...
    batch_advice_max_spread: float = 0.5  # ... and a relative standard error of B_noise <= 0.5 (also: the factor
    # must hold at B_noise -/+ 2 standard errors)


@rule(
    "batch_size_advice",
    requires=(Q.GNS_TRACE, Q.GNS_GRAD_SQ),
    severity="info",
    rank=368,
    thresholds=BatchSizeThresholds,
    summary="the batch per optimizer step is ≥ 4 times below or above the gradient noise scale B_noise = tr(Σ) / G² "
    "(estimated from two batch sizes: DDP ranks or accumulation); quiet when the estimate's spread is > 50%",
)
def batch_size_advice(view: RunView, t: BatchSizeThresholds) -> list[Diagnosis]:
    """Advise a larger (smaller) batch when it sits far below (above) the gradient noise scale."""
    est = noise_scale_estimate(view, t.batch_advice_window)
    if est is None:
        return []
    b_noise, se, n, first = est
    batch = _batch(view)
    if batch is None or n < t.batch_advice_min_estimates or se > t.batch_advice_max_spread * b_noise:
        return []
    factor = t.batch_advice_factor
    evidence = {
        "noise_scale": b_noise,
        "noise_scale_se": se,
        "batch_size": batch,
        "estimates": float(n),
        "ratio": b_noise / batch,
    }
    head = f"The gradient noise scale is ~{_round(b_noise)} samples (±{_round(se)}, over {n} logging steps)"
    if batch * factor <= b_noise - 2 * se:
        message = (
            f"{head}; your batch of {batch:,.0f} spends most of each step on noise: a larger batch (with a "
            "proportionally larger learning rate) would need fewer steps."
        )
        suggestions = [
            f"Raise the batch size toward ~{_round(b_noise)} (more devices, or gradient accumulation) and the learning "
            "rate in proportion (linear scaling for SGD; with Adam, closer to the square root).",
            "If steps are cheap and time is no concern, the small batch is fine: it uses fewer samples in total.",
        ]
    elif batch >= factor * (b_noise + 2 * se):
        message = (
            f"{head}; your batch of {batch:,.0f} is far above it: each step averages away noise that is already "
            "small, so most of its compute buys little: a smaller batch (with a proportionally smaller learning "
            "rate) would reach the same loss with fewer samples."
        )
        suggestions = [
            f"Lower the batch size toward ~{_round(b_noise)} and the learning rate in proportion, or keep the batch "
            "and expect fewer gains per sample (B_noise usually grows as the loss falls).",
        ]
    else:
        return []
    return [
        Diagnosis(
            code="batch_size_advice",
            severity="info",
            step=first,
            layer=None,
            message=message,
            evidence=evidence,
            suggestions=suggestions,
        )
    ]


def noise_scale_estimate(view: RunView, window: int) -> tuple[float, float, int, int] | None:
    """``(B_noise, its standard error, estimates used, first step)`` over the last ``window`` logging steps.

    ``B_noise = mean(tr Σ) / mean(|G|²)`` with the delta-method error of a ratio of means; ``None``
    without estimates or when either mean is not positive.
    """
    trace = finite(view.series(Q.GNS_TRACE))
    g2 = finite(view.series(Q.GNS_GRAD_SQ))
    steps = trace.index.intersection(g2.index)[-window:]
    n = len(steps)
    if n < 2:
        return None
    tr, gg = trace.loc[steps].to_numpy(), g2.loc[steps].to_numpy()
    mt, mg = float(tr.mean()), float(gg.mean())
    if not (mt > 0 and mg > 0):
        return None
    b = mt / mg
    cov = np.cov(np.vstack([tr, gg]))
    rel_var = (cov[0, 0] / mt**2 + cov[1, 1] / mg**2 - 2 * cov[0, 1] / (mt * mg)) / n
    return b, b * math.sqrt(max(float(rel_var), 0.0)), n, int(steps[0])


def _batch(view: RunView) -> float | None:
    recorded = finite(view.series(Q.BATCH_SIZE))
    if len(recorded):
        return float(recorded.iloc[-1])
    size = view.facts.batch_size
    return float(size) if size else None


def _round(x: float) -> str:
    """Two significant figures with thousands separators (``2,000``, ``37``, ``0.52``)."""
    if not math.isfinite(x) or x <= 0:
        return f"{x:.2g}"
    r = float(f"{x:.2g}")
    return f"{r:,.{max(0, 1 - math.floor(math.log10(r)))}f}"
