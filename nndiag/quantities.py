"""The registry of recorded quantities: every statistic nndiag stores, in one place.

Each :class:`Quantity` declares its stored name (the ``stat`` column of the history and the run
store, unchanged since schema version 1), its scope (one value per ``layer``, per ``param``eter or
per ``run``), how it is finalised from the device's sufficient statistics, its TensorBoard tag, and
its report title and unit. Code refers to a statistic through the module-level constants
(``Q.ACT_STD`` is the string ``"act_std"``), so a typo is an ``AttributeError`` and a search for the
constant finds every use; the metadata is :data:`QUANTITIES` (``Q.spec(Q.ACT_STD).title``).

This module imports nothing from nndiag: every layer may use it.

Example:
    >>> from nndiag import quantities as Q
    >>> Q.ACT_STD, Q.spec(Q.ACT_STD).scope, Q.spec(Q.DEAD_FRAC).unit
    ('act_std', 'layer', 'fraction of units')
    >>> Q.spec(Q.ACT_STD).tag("encoder.0"), Q.spec(Q.LOSS).tag()
    ('nndiag/act_std/encoder.0', 'nndiag/loss')
    >>> Q.tag_for("grad_norm", "fc.weight")
    'nndiag/grad_norm/fc.weight'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Scope = Literal["layer", "param", "run"]

TAG_PREFIX: Final = "nndiag"

# -- stored names (the ``stat`` column; never rename: stores written before must load) -----------
ACT_MEAN: Final = "act_mean"
ACT_STD: Final = "act_std"
NONFINITE: Final = "nonfinite"
DEAD_FRAC: Final = "dead_frac"
SAT_FRAC: Final = "sat_frac"
ACT_HIST: Final = "act_hist"
GRAD_NORM: Final = "grad_norm"
WEIGHT_NORM: Final = "weight_norm"
UPDATE_RATIO: Final = "update_ratio"
LOSS: Final = "loss"
VAL_LOSS: Final = "val_loss"
GRAD_NORM_TOTAL: Final = "grad_norm_total"
LR: Final = "lr"
OUTPUT_MEAN: Final = "output_mean"
OUTPUT_STD: Final = "output_std"
OUTPUT_MIN: Final = "output_min"
OUTPUT_MAX: Final = "output_max"
OUTPUT_SPREAD: Final = "output_spread"
GRAD_NOISE_SCALE: Final = "grad_noise_scale"
GNS_GRAD_SQ: Final = "gns_grad_sq"
GNS_TRACE: Final = "gns_trace"
GNS_SMALL_SQ: Final = "gns_small_sq"
GNS_BIG_SQ: Final = "gns_big_sq"
GNS_SMALL_BATCH: Final = "gns_small_batch"
BATCH_SIZE: Final = "batch_size"

# The layer name of the model input's statistics, and of run-wide statistics.
INPUT_LAYER: Final = "input"
RUN_LAYER: Final = ""


def tag_for(stat: str, layer: str = "") -> str:
    """TensorBoard tag of one statistic: ``nndiag/<stat>/<layer>`` (run-wide: ``nndiag/<stat>``)."""
    return f"{TAG_PREFIX}/{stat}/{layer}" if layer else f"{TAG_PREFIX}/{stat}"


@dataclass(frozen=True)
class Quantity:
    """One recorded statistic.

    Attributes:
        name: the stored name (``stat`` column, TensorBoard tag part).
        scope: ``layer`` (per recorded module, and ``input``), ``param`` (per parameter), or
            ``run`` (run-wide, layer ``""``; ``lr`` is run-wide but keyed by optimizer/group).
        finalised: how the host turns the device's sufficient statistics into the value.
        title: the report's title of the quantity.
        unit: the unit of its values (``""``: dimensionless, in the units of the data).
        logging_steps_only: recorded on logging steps only (``loss`` is recorded every step).
    """

    name: str
    scope: Scope
    finalised: str
    title: str
    unit: str
    logging_steps_only: bool = True

    def tag(self, layer: str = "") -> str:
        """TensorBoard tag of this quantity for ``layer`` (see :func:`tag_for`)."""
        return tag_for(self.name, layer)


QUANTITIES: Final[dict[str, Quantity]] = {
    q.name: q
    for q in (
        Quantity(ACT_MEAN, "layer", "_sum / _n", "activation mean", "activation units"),
        Quantity(ACT_STD, "layer", "sqrt(_sq^2 / _n - mean^2), population std", "activation std", "activation units"),
        Quantity(NONFINITE, "layer", "_nonfinite (count of NaN/Inf elements)", "non-finite activations", "elements"),
        Quantity(
            DEAD_FRAC,
            "layer",
            "_dead / _units (ReLU-family or non-negative outputs only)",
            "dead units",
            "fraction of units",
        ),
        Quantity(SAT_FRAC, "layer", "_sat / _n", "saturated outputs", "fraction of elements"),
        Quantity(ACT_HIST, "layer", "histogram of the elements (TensorBoard only, not stored)", "activations", ""),
        Quantity(GRAD_NORM, "param", "L2 norm of the gradient", "gradient norm", "L2 norm"),
        Quantity(WEIGHT_NORM, "param", "_wb (L2 norm of the weights before the step)", "weight norm", "L2 norm"),
        Quantity(
            UPDATE_RATIO,
            "param",
            "_delta / _wb (sampled mode: / _wbs)",
            "update / weight ratio",
            "ratio of L2 norms",
        ),
        Quantity(LOSS, "run", "mean of the step's batch losses", "training loss", "", logging_steps_only=False),
        Quantity(VAL_LOSS, "run", "as logged by the user or the framework", "validation loss", ""),
        Quantity(GRAD_NORM_TOTAL, "run", "sqrt(sum of squared grad_norm)", "global gradient norm", "L2 norm"),
        Quantity(LR, "run", "the learning rate the step used", "learning rate", ""),
        Quantity(OUTPUT_MEAN, "run", "mean of the model output's elements", "model output mean", "output units"),
        Quantity(
            OUTPUT_STD, "run", "population std of the model output's elements", "model output std", "output units"
        ),
        Quantity(OUTPUT_MIN, "run", "smallest element of the model output", "model output min", "output units"),
        Quantity(OUTPUT_MAX, "run", "largest element of the model output", "model output max", "output units"),
        Quantity(
            OUTPUT_SPREAD,
            "run",
            "std across samples (dim 0), averaged over the other elements: ~0 for a constant prediction",
            "model output spread across samples",
            "output units",
        ),
        # the gradient noise scale (McCandlish et al. 2018; nndiag/collect/noise_scale.py, docs/noise_scale.md)
        Quantity(
            GRAD_NOISE_SCALE,
            "run",
            "_gns_s / _gns_g: EMA of gns_trace over EMA of gns_grad_sq (B_simple)",
            "gradient noise scale",
            "samples",
        ),
        Quantity(GNS_GRAD_SQ, "run", "(B_b |G_b|² - B_s |G_s|²) / (B_b - B_s)", "squared true gradient |G|²", ""),
        Quantity(GNS_TRACE, "run", "(|G_s|² - |G_b|²) / (1/B_s - 1/B_b)", "gradient noise tr(Σ)", "per sample"),
        Quantity(GNS_SMALL_SQ, "run", "mean squared norm of micro-batch (per-rank) gradients", "|G_small|²", ""),
        Quantity(GNS_BIG_SQ, "run", "squared norm of the step's (accumulated, all-reduced) gradient", "|G_big|²", ""),
        Quantity(GNS_SMALL_BATCH, "run", "samples of one forward pass on one rank (B_s)", "small batch", "samples"),
        Quantity(BATCH_SIZE, "run", "samples per optimizer step: ranks x micro-batches x B_s", "batch size", "samples"),
    )
}

# -- groups --------------------------------------------------------------------------------------
ACTIVATION_STATS: Final = (ACT_MEAN, ACT_STD, DEAD_FRAC, SAT_FRAC, NONFINITE)
PARAMETER_STATS: Final = (GRAD_NORM, WEIGHT_NORM, UPDATE_RATIO)
KEY_STATS: Final = ACTIVATION_STATS + PARAMETER_STATS
FRACTION_STATS: Final = (DEAD_FRAC, SAT_FRAC)
OUTPUT_STATS: Final = (OUTPUT_MEAN, OUTPUT_STD, OUTPUT_MIN, OUTPUT_MAX, OUTPUT_SPREAD)
NOISE_SCALE_STATS: Final = (GRAD_NOISE_SCALE, GNS_GRAD_SQ, GNS_TRACE, GNS_SMALL_SQ, GNS_BIG_SQ, GNS_SMALL_BATCH)


def spec(name: str) -> Quantity:
    """The :class:`Quantity` of a stored name; a ``KeyError`` naming the known ones otherwise."""
    try:
        return QUANTITIES[name]
    except KeyError:
        raise KeyError(f"unknown nndiag quantity {name!r}; known: {', '.join(QUANTITIES)}") from None


__all__ = [
    "ACTIVATION_STATS",
    "ACT_HIST",
    "ACT_MEAN",
    "ACT_STD",
    "BATCH_SIZE",
    "DEAD_FRAC",
    "FRACTION_STATS",
    "GNS_BIG_SQ",
    "GNS_GRAD_SQ",
    "GNS_SMALL_BATCH",
    "GNS_SMALL_SQ",
    "GNS_TRACE",
    "GRAD_NOISE_SCALE",
    "GRAD_NORM",
    "GRAD_NORM_TOTAL",
    "INPUT_LAYER",
    "KEY_STATS",
    "LOSS",
    "LR",
    "NOISE_SCALE_STATS",
    "NONFINITE",
    "OUTPUT_MAX",
    "OUTPUT_MEAN",
    "OUTPUT_MIN",
    "OUTPUT_SPREAD",
    "OUTPUT_STATS",
    "OUTPUT_STD",
    "PARAMETER_STATS",
    "QUANTITIES",
    "RUN_LAYER",
    "SAT_FRAC",
    "TAG_PREFIX",
    "UPDATE_RATIO",
    "VAL_LOSS",
    "WEIGHT_NORM",
    "Quantity",
    "Scope",
    "spec",
    "tag_for",
]
