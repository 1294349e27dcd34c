"""What one rank hands to the exchange of a logging step, what comes back, and how each statistic is combined.

Example:
    >>> p = StepPayload()
    >>> Combined(p, None, []).payload is p, ACT_SUMS["_sq"]
    (True, 'squares')
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nndiag import quantities as Q

SUM, SQUARES, MEAN, ANY = "sum", "squares", "mean", "any"
HEADER = 3  # ranks with statistics, unplaced statistics, halt vote
# norms of parameters: replicated ones are averaged, sharded ones combined as sqrt(sum of squares)
PARAM_NORMS = frozenset({Q.GRAD_NORM, Q.WEIGHT_NORM, "_wb", "_wbs", "_delta"})
# slots (as exchanged: per-unit maxima travel as "_active", minima as "_neg") that light logging steps
# (``RecorderConfig.full_every``) leave out on every rank alike: not decoded there (they would read as zeros)
FULL_STEP_SLOTS = frozenset({Q.WEIGHT_NORM, "_wb", "_wbs", "_delta", "_active", "_neg"})
ACT_SUMS = {"_n": SUM, "_sum": SUM, "_nonfinite": SUM, "_sat": SUM, "_sq": SQUARES}


@dataclass
class StepPayload:
    """One rank's statistics of one step, before combining (everything still on the device)."""

    keys: list[tuple[str, str]] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    extras: list[tuple[str, str, float]] = field(default_factory=list)
    hist_keys: list[tuple[str, str]] = field(default_factory=list)
    hists: list[torch.Tensor] = field(default_factory=list)
    unit_peaks: dict[str, torch.Tensor] = field(default_factory=dict)  # per-unit maxima (dead units)
    full: bool = True  # False: a light logging step (no weight, update or dead-unit statistics)


@dataclass
class Combined:
    """What rank 0 writes for one exchange: statistics and losses of the global batch."""

    payload: StepPayload | None
    losses: torch.Tensor | None
    loss_steps: list[int]


@dataclass(frozen=True)
class Slot:
    """Where one statistic sits in the exchanged vector, and how it is combined."""

    layer: str
    stat: str
    op: str
    length: int = 1
