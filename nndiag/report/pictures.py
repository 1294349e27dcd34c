"""Which pictures a run's report holds, as deferred drawing tasks (so rendering can show progress).

Order: loss; batch size vs gradient noise scale (where recorded); heatmaps of ``act_std``,
``dead_frac``, ``sat_frac``, ``update_ratio``; gradient norm by depth; activation std by depth. A
picture whose data the run lacks draws ``None`` and is left out of the page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nndiag import quantities as Q
from nndiag.report import figures
from nndiag.report.layers import StatMatrix, weight_params
from nndiag.report.model import RunReport

HEATMAP_TITLES = {
    Q.ACT_STD: (
        "Activation std per layer over time",
        "log colour scale; colour fading with depth = collapse; grey = exactly 0 or not recorded",
    ),
    Q.DEAD_FRAC: ("Dead units per layer over time", "fraction of units that never activate in the batch"),
    Q.SAT_FRAC: ("Saturated units per layer over time", "fraction of tanh/sigmoid outputs at their limits"),
    Q.UPDATE_RATIO: (
        "Update / weight ratio per parameter over time",
        "log colour scale centred on the healthy 1e-3: red = too fast (lr too high), blue = too slow",
    ),
}


@dataclass(frozen=True)
class Picture:
    """A figure to draw: ``draw()`` returns a matplotlib Figure or ``None`` (nothing to show)."""

    key: str
    title: str
    caption: str
    draw: Callable[[], Any]


def pictures(report: RunReport) -> list[Picture]:
    """The report's pictures in page order."""
    out = [Picture(Q.LOSS, "Loss", "training loss, its trend, and the validation loss", lambda: _loss(report))]
    out.append(
        Picture(
            Q.GRAD_NOISE_SCALE,
            "Batch size vs gradient noise scale",
            "B_noise = tr(Σ)/|G|² from two batch sizes (DDP ranks or accumulation; docs/noise_scale.md): a batch far "
            "below it spends its steps on noise, far above it its compute",
            lambda: _noise_scale(report),
        )
    )
    for stat, (title, caption) in HEATMAP_TITLES.items():
        out.append(Picture(stat, title, caption, _heatmap(report, stat, title)))
    out.append(
        Picture(
            "grad_depth",
            "Gradient norm by depth",
            "per weight tensor, at the start, middle and end of the recording: a slope over depth of several decades "
            "means vanishing (rising towards the output) or exploding (falling) gradients",
            lambda: _grad_depth(report),
        )
    )
    out.append(
        Picture(
            "act_depth",
            "Activation std by depth (the init picture)",
            "at the first and last logging step: healthy initialisation keeps it roughly level over depth",
            lambda: _act_depth(report),
        )
    )
    return out


def _loss(report: RunReport) -> Any:
    loss = report.series(Q.LOSS)
    if loss.empty:
        return None
    val = report.series(Q.VAL_LOSS)
    return figures.loss_figure(
        loss.index.to_numpy(),
        loss.to_numpy(dtype=np.float64),
        val.index.to_numpy() if len(val) else None,
        val.to_numpy(dtype=np.float64) if len(val) else None,
        report.overview.get("first_nonfinite_loss_step"),
    )


def _noise_scale(report: RunReport) -> Any:
    noise = report.series(Q.GRAD_NOISE_SCALE)
    if noise.empty:
        return None
    batch = report.series(Q.BATCH_SIZE)
    return figures.noise_scale_figure(
        noise.index.to_numpy(), noise.to_numpy(dtype=np.float64), batch.index.to_numpy(), batch.to_numpy(np.float64)
    )


def _heatmap(report: RunReport, stat: str, title: str) -> Callable[[], Any]:
    return lambda: figures.heatmap_figure(report.matrix(stat), title)


def _at(m: StatMatrix, names: list[str], column: int) -> np.ndarray:
    rows = [m.names.index(n) for n in names]
    col = m.values[rows, :][:, column]
    return np.asarray(col, dtype=np.float64)


def _moments(m: StatMatrix, count: int) -> list[tuple[str, int]]:
    cols = m.values.shape[1]
    picks = [0, cols // 2, cols - 1] if count == 3 else [0, cols - 1]
    seen: list[tuple[str, int]] = []
    for c in dict.fromkeys(picks):
        seen.append((f"step {int(m.steps[c])}", c))
    return seen


def _grad_depth(report: RunReport) -> Any:
    m = report.matrix(Q.GRAD_NORM)
    if m.empty:
        return None
    names = weight_params(m.names, report.facts)
    lines = [(label, _at(m, names, c)) for label, c in _moments(m, 3)]
    return figures.depth_figure(names, lines, "gradient L2 norm", "Gradient norm by depth")


def _act_depth(report: RunReport) -> Any:
    m = report.matrix(Q.ACT_STD)
    if m.empty:
        return None
    lines = [(label, _at(m, m.names, c)) for label, c in _moments(m, 2)]
    return figures.depth_figure(m.names, lines, "activation std", "Activation std by depth")
