"""The nndiag TensorBoard dashboard: a custom-scalar layout written into every run.

TensorBoard's *Custom Scalars* tab shows it with no manual step. Categories:

* ``nndiag: loss & learning rate``: training and validation loss; learning rates; global
  gradient norm; the batch size (samples per optimizer step) and the gradient noise scale on one
  chart (the noise scale where two batch sizes exist: DDP ranks, gradient accumulation).
* ``nndiag: update ratio (target 1e-3)``: all parameters on one chart, then one *Margin* chart
  per parameter whose shaded band is the healthy range ``UPDATE_BAND`` (1e-4 .. 1e-2, a decade
  either side of the lecture's 1e-3; the band is logged as the run-wide scalars
  ``nndiag/target/update_ratio_low`` and ``..._high`` at every logging step).
* ``nndiag: activations``: act std, dead and saturated fractions of all layers, then one chart
  per layer with its ``act_std``, ``dead_frac`` and ``sat_frac``.

Multiline charts select tags by regular expression (layer names are escaped); Margin charts
name exact tags. ``dashboards/nndiag_layout.json`` in the repository is this layout for the
demo model (regenerate it with ``python dashboards/export_layout.py``).

Example:
    >>> lay = layout(["0", "1"], ["0.weight"])
    >>> list(lay)
    ['nndiag: loss & learning rate', 'nndiag: update ratio (target 1e-3)', 'nndiag: activations']
    >>> lay["nndiag: update ratio (target 1e-3)"]["0.weight"]
    ['Margin', ['nndiag/update_ratio/0.weight', 'nndiag/target/update_ratio_low', 'nndiag/target/update_ratio_high']]
"""

from __future__ import annotations

import re
from typing import Any

from nndiag import quantities as Q

UPDATE_BAND = (1e-4, 1e-2)
BAND_TAGS = ("nndiag/target/update_ratio_low", "nndiag/target/update_ratio_high")
LAYER_CHART_STATS = (Q.ACT_STD, Q.DEAD_FRAC, Q.SAT_FRAC)  # the per-layer activation charts
MAX_PER_ITEM_CHARTS = 256  # beyond this many layers/parameters only the all-in-one charts are written

Layout = dict[str, dict[str, list[Any]]]


def layout(layers: list[str], params: list[str]) -> Layout:
    """The custom-scalar layout for these layers and parameters (TensorBoard's dict form).

    Args:
        layers: recorded layer names in forward order (``input`` included if recorded).
        params: parameter names that have an ``update_ratio``.

    """
    loss = {
        "loss": ["Multiline", [rf"^{Q.tag_for(Q.LOSS)}$", rf"^{Q.tag_for(Q.VAL_LOSS)}$"]],
        "learning rate": ["Multiline", [rf"^{Q.tag_for(Q.LR)}/.*"]],
        "global gradient norm": ["Multiline", [rf"^{Q.tag_for(Q.GRAD_NORM_TOTAL)}$"]],
        # the batch per optimizer step against the gradient noise scale (samples, both; docs/noise_scale.md)
        "batch size vs gradient noise scale": [
            "Multiline",
            [rf"^{Q.tag_for(Q.BATCH_SIZE)}$", rf"^{Q.tag_for(Q.GRAD_NOISE_SCALE)}$"],
        ],
    }
    ratio: dict[str, list[Any]] = {"all parameters": ["Multiline", [rf"^{Q.tag_for(Q.UPDATE_RATIO)}/.*"]]}
    if len(params) <= MAX_PER_ITEM_CHARTS:
        for p in params:
            ratio[p] = ["Margin", [Q.tag_for(Q.UPDATE_RATIO, p), *BAND_TAGS]]
    acts: dict[str, list[Any]] = {
        f"{stat}, all layers": ["Multiline", [rf"^{Q.tag_for(stat)}/.*"]] for stat in LAYER_CHART_STATS
    }
    if len(layers) <= MAX_PER_ITEM_CHARTS:
        for name in layers:
            acts[name] = ["Multiline", [rf"^{Q.TAG_PREFIX}/({'|'.join(LAYER_CHART_STATS)})/{re.escape(name)}$"]]
    return {
        "nndiag: loss & learning rate": loss,
        "nndiag: update ratio (target 1e-3)": ratio,
        "nndiag: activations": acts,
    }


def write_layout(writer: Any, lay: Layout) -> bool:
    """Write ``lay`` with the writer's ``add_custom_scalars`` (torch and tensorboardX); False if it has none."""
    add = getattr(writer, "add_custom_scalars", None)
    if add is None:
        return False
    add(lay)
    return True
