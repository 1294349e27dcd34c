"""Typed, validated configuration of the recorder.

Example:
    >>> from nndiag.config import RecorderConfig
    >>> RecorderConfig().update_ratio
    'exact'
    >>> RecorderConfig(update_ratio="fast")
    Traceback (most recent call last):
    ...
    ValueError: update_ratio must be one of ('exact', 'sampled', 'off'), got 'fast'.

"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, get_args

UpdateRatioMode = Literal["exact", "sampled", "off"]


_POSITIVE_INTS = (
    "histogram_bins",
    "update_ratio_samples",
    "full_every",
    "max_queue",
    "max_pending_losses",
    "memory_rows",
)


@dataclass(frozen=True)
class RecorderConfig:
    """What the recorder measures and how it writes.

    Attributes:
        histograms: also write activation and weight histograms to TensorBoard (off: they cost
            a host copy of 2*bins+1 numbers per tensor per logging step, and disk space).
        histogram_bins: number of histogram bins.
        update_ratio: ``"exact"`` keeps one copy of the trainable parameters during a logging
            step (the issue's budget); ``"sampled"`` keeps ``update_ratio_samples`` fixed random
            elements per tensor (for very large models; an estimate of the ratio);
            ``"off"`` records no update ratios.
        update_ratio_samples: elements per tensor in ``"sampled"`` mode.
        full_every: after step 20 (the default schedule's dense start and first sparse step), a
            logging step closer than this many steps to the last *full* one is *light*: it records
            the loss, learning rates, activations and gradients, but not update ratios, weight
            norms, dead units or the model output's statistics (the weight copy and the extra passes
            over the parameters and activations cost most on fast steps). Measured values are exact
            on the steps where they appear. The default schedule never logs that densely after step
            20, so it only affects dense schedules (``schedule=1``: full at steps 0-20, 24, 28,
            ...); ``1`` makes every logging step full.
        flush_seconds: the run store commits at least this often (crash-safe up to the last commit).
        max_queue: logging steps that may wait for the background writer; beyond that a step's
            statistics are dropped (with one warning) rather than stall training.
        max_pending_losses: losses kept on the device between logging steps before an extra
            transfer is made (bounds memory under sparse custom schedules).
        memory_rows: history rows kept in memory: the run's first ``memory_rows // 10`` and the most
            recent ones (the advisors see these); the rest stays in the run store and ``history``
            reads it back from there. Memory stays flat however long the run.
        distributed: in a ``torch.distributed`` run (DDP, FSDP, several nodes), combine the ranks'
            statistics with one all-reduce per logging step so that rank 0 records the global batch;
            ``False``: rank 0 records its own batch and nndiag issues no collective.
        tensorboard: write scalars to TensorBoard.
        store: write the SQLite run store.
        park_hooks: take nndiag's forward hooks off the modules from the first non-logging step to the
            next logging step, so that quiet steps call the modules as without nndiag (a hooked module
            takes torch's slower call path). Automatic: never under ``torch.compile``. ``False`` keeps
            them registered throughout (needed only for a model first compiled in the middle of a run).

    """

    histograms: bool = False  # off by default: heavier on disk and transfer
    histogram_bins: int = 30  # enough resolution to see saturation piles at +-1
    update_ratio: UpdateRatioMode = "exact"  # exact ratios; "sampled" for very large models
    update_ratio_samples: int = 4096  # sampled mode: relative error of the ratio is ~1/sqrt(4096)
    full_every: int = 4  # dense schedules past step 20: update ratios etc. on every 4th step (1: every logging step)
    flush_seconds: float = 2.0  # at most ~2 s of statistics lost by a kill -9
    max_queue: int = 256  # logging steps buffered for the writer thread
    max_pending_losses: int = 1024  # device-side loss buffer before a forced transfer
    memory_rows: int = 1_000_000  # rows kept in memory (~20-25 bytes each: ~25 MB), the run's start included
    tensorboard: bool = True  # write TensorBoard scalars/text
    store: bool = True  # write the SQLite run store
    park_hooks: bool = True  # forward hooks off the modules on quiet steps (eager models; see collect.activations)
    # torch.distributed runs: combine every rank's statistics at each logging step (one all-reduce);
    # False: rank 0 records its own batch only and no collective is ever issued
    distributed: bool = True
    # write nndiag-report.{html,md,json} into the run directory when the run ends (needs the store);
    # None = yes, unless the environment sets NNDIAG_REPORT=0 (e.g. in a test suite)
    report: bool | None = None

    @property
    def wants_report(self) -> bool:
        """Whether to write the post-run report (``report``, else the ``NNDIAG_REPORT`` environment variable)."""
        if self.report is not None:
            return self.report
        return os.environ.get("NNDIAG_REPORT", "1").strip().lower() not in ("0", "false", "no", "off")

    def __post_init__(self) -> None:
        modes = get_args(UpdateRatioMode)
        if self.update_ratio not in modes:
            raise ValueError(f"update_ratio must be one of {modes}, got {self.update_ratio!r}.")
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not (isinstance(self.flush_seconds, (int, float)) and self.flush_seconds > 0):
            raise ValueError(f"flush_seconds must be a positive number of seconds, got {self.flush_seconds!r}.")
