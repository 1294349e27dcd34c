"""The report's pictures, drawn with matplotlib's object API (no pyplot state, no display).

Each function takes plain data and returns a ``matplotlib.figure.Figure`` (or ``None`` when
there is nothing to draw); :func:`nndiag.render.figure.img_tag` embeds it.

Example:
    >>> import numpy as np
    >>> fig = loss_figure(np.arange(100), np.linspace(2.3, 0.5, 100))
    >>> len(fig.axes)
    1
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nndiag import quantities as Q
from nndiag.render.figure import new_figure, plain_text
from nndiag.report.layers import StatMatrix

HEALTHY_UPDATE_RATIO = 1e-3  # the lecture's target, the white middle of the update-ratio colour scale
MAX_TICK_LABELS = 40


def trend(values: np.ndarray) -> np.ndarray:
    """A robust trend of a noisy curve: centred rolling median over ~2% of the points (at least 5).

    Example:
        >>> trend(np.array([1.0, 1.0, 9.0, 1.0, 1.0])).tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    import pandas as pd

    window = max(5, len(values) // 50) | 1
    return pd.Series(values).rolling(window, center=True, min_periods=1).median().to_numpy()


def _log_y_wanted(*arrays: np.ndarray) -> bool:
    vals = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    return bool(len(vals)) and bool((vals > 0).all()) and vals.max() / vals.min() > 30


def loss_figure(
    steps: np.ndarray,
    loss: np.ndarray,
    val_steps: np.ndarray | None = None,
    val_loss: np.ndarray | None = None,
    nonfinite_step: int | None = None,
) -> Any:
    """Training loss per step with its trend, the validation loss, and where the loss became NaN/Inf."""
    fig = new_figure(9.5, 3.6)
    ax = fig.add_subplot()
    finite = np.isfinite(loss)
    ax.plot(steps[finite], loss[finite], color="#9ab8dc", lw=0.8, label="training loss")
    if finite.sum() >= 5:
        ax.plot(steps[finite], trend(loss[finite]), color="#1f5fa8", lw=2.0, label="trend (rolling median)")
    if val_steps is not None and val_loss is not None and len(val_loss):
        ok = np.isfinite(val_loss)
        ax.plot(val_steps[ok], val_loss[ok], "o-", color="#d46b08", lw=1.6, ms=4, label="validation loss")
    if nonfinite_step is not None:
        ax.axvline(nonfinite_step, color="#b3261e", ls="--", lw=1.5, label=f"loss NaN/Inf from step {nonfinite_step}")
    if _log_y_wanted(loss, val_loss if val_loss is not None else np.zeros(0)):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return fig


def noise_scale_figure(steps: np.ndarray, noise: np.ndarray, batch_steps: np.ndarray, batch: np.ndarray) -> Any:
    """The gradient noise scale (EMA estimate) and the batch per optimizer step, both in samples, log y."""
    fig = new_figure(9.5, 3.2)
    ax = fig.add_subplot()
    ok = np.isfinite(noise) & (noise > 0)
    ax.plot(steps[ok], noise[ok], color="#1f5fa8", lw=1.6, label="gradient noise scale B_noise")
    if len(batch):
        ax.plot(batch_steps, batch, color="#d46b08", lw=1.6, ls="--", label="batch size (per optimizer step)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("samples")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return fig


def _tick_labels(ax: Any, names: list[str]) -> None:
    stride = max(1, int(np.ceil(len(names) / MAX_TICK_LABELS)))
    idx = np.arange(0, len(names), stride)
    ax.set_yticks(idx)
    ax.set_yticklabels([plain_text(names[i] if len(names[i]) <= 28 else "…" + names[i][-27:]) for i in idx], fontsize=7)


def heatmap_figure(m: StatMatrix, title: str) -> Any:
    """A layer x step heatmap: log colour scale for std and update ratios (1e-3 marked), 0..1 for fractions."""
    from matplotlib import colors

    if m.empty or not np.isfinite(m.values).any():
        return None
    values = np.ma.masked_invalid(m.values)
    n = len(m.names)
    fig = new_figure(9.5, min(2.0 + 0.14 * n, 13.0))
    ax = fig.add_subplot()
    cmap: Any
    if m.stat in Q.FRACTION_STATS:
        norm: Any = colors.Normalize(0.0, 1.0)
        cmap = colors.LinearSegmentedColormap.from_list("frac", ["#f7fbff", "#fdae6b", "#d94801", "#7f2704"])
    else:
        positive = m.values[np.isfinite(m.values) & (m.values > 0)]
        if m.stat == Q.UPDATE_RATIO:
            # symmetric in log space around the healthy 1e-3: blue = too slow, red = too fast
            span = (
                max(100.0, float(np.nanmax(np.abs(np.log10(positive / HEALTHY_UPDATE_RATIO)))))
                if len(positive)
                else 100
            )
            span = 10 ** min(np.ceil(np.log10(span)), 8)
            norm = colors.LogNorm(HEALTHY_UPDATE_RATIO / span, HEALTHY_UPDATE_RATIO * span)
            cmap = "RdBu_r"
        else:
            lo, hi = np.percentile(positive, [1, 99]) if len(positive) else (1e-3, 1.0)
            norm = colors.LogNorm(max(lo, 1e-12), max(hi, lo * 10))
            cmap = "viridis"
        values = np.ma.masked_where(~(m.values > 0), m.values)  # zeros and NaN: grey
    if isinstance(cmap, str):
        import matplotlib

        cmap = matplotlib.colormaps[cmap]
    cmap = cmap.with_extremes(bad="#d9d9d9")
    extent = (float(m.steps[0]) - 0.5, float(m.steps[-1]) + 0.5, n - 0.5, -0.5)
    image = ax.imshow(values, aspect="auto", interpolation="nearest", norm=norm, cmap=cmap, extent=extent)
    _tick_labels(ax, m.names)
    ax.set_xlabel("optimizer step")
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01)
    if m.stat == Q.UPDATE_RATIO:
        bar.ax.axhline(HEALTHY_UPDATE_RATIO, color="black", lw=1.5)
        bar.ax.text(
            1.05, HEALTHY_UPDATE_RATIO, " 1e-3", transform=bar.ax.get_yaxis_transform(), va="center", fontsize=8
        )
    return fig


def depth_figure(
    names: list[str], lines: list[tuple[str, np.ndarray]], ylabel: str, title: str, log: bool = True
) -> Any:
    """A statistic against depth (forward order), one line per moment of training."""
    if not names or not lines:
        return None
    fig = new_figure(9.5, 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    palette = ["#9ab8dc", "#4f86c6", "#1f3f8a"]
    for (label, y), color in zip(lines, palette[-len(lines) :] if len(lines) <= 3 else palette * 3, strict=False):
        ok = np.isfinite(y) & ((y > 0) if log else True)
        ax.plot(x[ok], y[ok], "o-", ms=3, lw=1.5, color=color, label=label)
    if log and any((np.isfinite(y) & (y > 0)).any() for _, y in lines):
        ax.set_yscale("log")
        zeros = sorted({int(i) for _, y in lines for i in np.flatnonzero(y == 0)})
        if zeros:  # exactly zero cannot sit on a log axis: mark it along the bottom edge
            ax.plot(
                x[zeros],
                [0.02] * len(zeros),
                "x",
                color="#b3261e",
                ms=7,
                mew=2,
                label="exactly 0",
                transform=ax.get_xaxis_transform(),
            )
    stride = max(1, int(np.ceil(len(names) / MAX_TICK_LABELS)))
    ax.set_xticks(x[::stride])
    ax.set_xticklabels(
        [plain_text(n if len(n) <= 20 else "…" + n[-19:]) for n in names[::stride]], rotation=60, ha="right", fontsize=7
    )
    ax.set_xlabel("depth (forward order)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig


def overlay_figure(curves: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]) -> Any:
    """Several runs' loss trends (and validation losses, dashed) on one chart, for comparisons."""
    fig = new_figure(9.5, 3.8)
    ax = fig.add_subplot()
    cycle = ["#1f5fa8", "#d46b08", "#1b7f3b", "#b3261e", "#6a3d9a", "#8c564b", "#e377c2", "#7f7f7f"]
    arrays: list[np.ndarray] = []
    for i, (label, steps, loss, vsteps, vloss) in enumerate(curves):
        color = cycle[i % len(cycle)]
        ok = np.isfinite(loss)
        if ok.any():
            ax.plot(steps[ok], loss[ok], color=color, lw=0.6, alpha=0.35)
            ax.plot(steps[ok], trend(loss[ok]), color=color, lw=2.0, label=plain_text(label))
            arrays.append(loss[ok])
        if vsteps is not None and vloss is not None and np.isfinite(vloss).any():
            vok = np.isfinite(vloss)
            ax.plot(vsteps[vok], vloss[vok], "--", color=color, lw=1.4, label=plain_text(f"{label} (validation)"))
            arrays.append(vloss[vok])
    if arrays and _log_y_wanted(*arrays):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig
