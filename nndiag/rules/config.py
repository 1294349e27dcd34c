"""All advisor thresholds in one typed, documented, validated object.

Defaults start from published practice (see ``KNOWLEDGE.md`` section 2 in the design docs and
``docs/rules.md``) and were then calibrated on nndiag's fault-injection suite.

Example:
    >>> from nndiag.rules.config import AdvisorConfig
    >>> cfg = AdvisorConfig()
    >>> cfg.dead_frac
    0.5
    >>> AdvisorConfig.from_dict({"dead_frac": 0.7}).dead_frac
    0.7
    >>> AdvisorConfig.from_dict({"dead_fraction": 0.7})
    Traceback (most recent call last):
    ...
    ValueError: unknown advisor threshold(s) dead_fraction; see nndiag.rules.config.AdvisorConfig for the names.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AdvisorConfig:
    """Thresholds of the rule-based advisors (one attribute per number; comments give the source)."""

    # -- loss -------------------------------------------------------------------------------
    diverge_factor: float = 2.0  # loss >= 2x its running minimum (cloud debugger: "loss >= 2x min")
    diverge_min_steps: int = 5  # ... sustained over this many consecutive recorded losses
    loss_explode: float = 1e3  # absolute loss above this counts as exploded (published 1e3)
    flat_window: int = 50  # optimizer steps over which a flat loss is judged
    flat_rel_drop: float = 0.01  # < 1% relative drop over the window = not decreasing
    converged_loss: float = 1e-3  # a loss resting below this has converged, not stalled
    oscillation_cv: float = 0.5  # step-to-step |diff| / mean loss above this = oscillating
    # -- learning rate / updates --------------------------------------------------------------
    update_ratio_healthy: float = 1e-3  # the lecture's healthy update/weight ratio
    update_ratio_high: float = 1e-1  # sustained median ratio above this = far too large (research checker: log10 > -1)
    update_ratio_low: float = 1e-5  # median ratio below this = far too small (research checker: log10 < -4 is 1e-4)
    # -- gradients ---------------------------------------------------------------------------
    vanish_ratio: float = 1e-3  # first/last layer gradient-norm ratio below this (repair system)
    vanish_abs: float = 1e-4  # ... and the first layer's gradient norm below this
    explode_ratio: float = 70.0  # first/last layer gradient-norm ratio above this (repair system)
    explode_growth: float = 100.0  # total gradient norm grown by this factor over the run
    explode_abs: float = 1e6  # total gradient norm above this
    # -- activations -------------------------------------------------------------------------
    dead_frac: float = 0.5  # > 50% of a ReLU layer's units dead (cloud debugger)
    sat_frac: float = 0.5  # > 50% of a tanh/sigmoid layer's outputs saturated
    collapse_ratio: float = 0.5  # per-layer act-std ratio below this, sustained over depth
    collapse_min_layers: int = 3  # ... over at least this many consecutive activation layers
    collapse_std: float = 0.05  # ... ending below this std
    # -- initialisation ----------------------------------------------------------------------
    init_scale_factor: float = 3.0  # weight std off the Xavier/He prescription by more than 3x
    # -- input -------------------------------------------------------------------------------
    input_mean_abs: float = 1.0  # |input mean| above this (cloud debugger uses 0.2 for images)
    input_std_max: float = 10.0  # input std above this, or ...
    input_std_min: float = 0.01  # ... below this
    # -- initial loss ------------------------------------------------------------------------
    initial_loss_tolerance: float = 0.5  # |loss0 - ln C| / ln C above this
    # -- overfitting -------------------------------------------------------------------------
    overfit_gap: float = 0.1  # (val - train) / train above this (research checker)
    overfit_patience: int = 3  # ... for this many validation checks
    underfit_loss_frac: float = 0.8  # train loss still above this fraction of ln C, flat, no gap
    # -- architecture ------------------------------------------------------------------------
    bn_min_batch: int = 8  # BatchNorm with a per-device batch below this
    # -- weights not updating ---------------------------------------------------------------
    frozen_checks: int = 3  # parameters identical over this many logging steps (published: 3-5 checks)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"advisor threshold {f.name} must be a positive number, got {value!r}.")
            if f.type == "int" and not isinstance(value, int):
                raise ValueError(f"advisor threshold {f.name} must be an integer, got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        """All thresholds by name."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdvisorConfig:
        """Defaults with the given thresholds overridden; unknown names raise ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown advisor threshold(s) {', '.join(unknown)}; "
                "see nndiag.rules.config.AdvisorConfig for the names."
            )
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> AdvisorConfig:
        """Read thresholds from a TOML (optionally under ``[advisor]``) or JSON file."""
        p = Path(path)
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        if "advisor" in data and isinstance(data["advisor"], dict):
            data = data["advisor"]
        return cls.from_dict(data)
