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
    loss_smooth_steps: int = 10  # loss curves are judged on a trailing rolling median over this many steps
    # (batch-to-batch noise of small batches; nndiag's calibration runs at batch 2-32) ...
    loss_smooth_noise: float = 0.1  # ... or more steps, until the smoothed loss's relative error is below this
    # (lognormal per-batch noise of std 0.6, seen at batch 2-4, then needs ~57 steps)
    loss_start_steps: int = 5  # the start level of the loss is the median of its first this many values
    converged_loss: float = 1e-3  # a loss resting below this has converged, not stalled (published practice)
    converged_frac: float = 0.05  # ... as has one resting below 5% of its start level (relative form, so that
    # per-batch spikes of a loss near zero, whose relative swings exceed 100% in healthy runs, are ignored)
    diverge_factor: float = 2.0  # smoothed loss >= 2x its running minimum (cloud debugger: "loss >= 2x min")
    diverge_min_steps: int = 5  # ... sustained over this many consecutive recorded losses
    loss_explode: float = 1e3  # a raw loss above this (and 2x the minimum) counts as exploded (published 1e3)
    explode_min_steps: int = 2  # ... at this many consecutive recorded losses (one spike is not an explosion)
    flat_window: int = 50  # optimizer steps over which a flat loss is judged, at least (cloud debugger: 10 checks)
    flat_window_frac: float = 0.25  # ... growing to this fraction of the run, so that the slow late progress of
    # long runs is not taken for a plateau
    flat_rel_drop: float = 0.01  # < 1% relative drop over the window = not decreasing (cloud debugger: 0.1% per
    # check over 10 checks); the window also grows until the noise of the drop estimate is below this
    oscillation_cv: float = 0.5  # median step-to-step |diff| / median loss above this = large swings (a healthy
    # batch-32 run swings ~0.02-0.2 above 5% of its start level; batch 4: up to ~0.6 but while still decreasing)
    oscillation_window: int = 30  # ... over this many steps, or more for a noisy loss: as many as it takes for the
    # window medians to resolve oscillation_progress (lognormal noise 0.3: 57 steps; 0.6: 227 steps); all of
    # this held for this many consecutive steps
    oscillation_level_frac: float = 0.5  # no progress: the loss is still above half its start level ...
    oscillation_progress: float = 0.1  # ... and is not 10% lower than in the window before
    # -- learning rate / updates --------------------------------------------------------------
    update_ratio_healthy: float = 1e-3  # the lecture's healthy update/weight ratio
    update_ratio_high: float = 1e-1  # sustained median ratio above this = far too large (research checker: log10 > -1)
    update_ratio_low: float = 1e-5  # even the largest ratio over the weight matrices below this = far too small
    # (research checker: log10 < -4 is 1e-4; another: lr * ratio < 1e-5)
    update_ratio_checks: int = 3  # ... median over weight matrices, sustained over this many logging steps
    lr_low_loss_drop: float = 0.05  # too low: the loss also moved by less than 5% (research: < 5% drop per check)
    lr_low_grad_ratio: float = 1e-4  # ... while the gradients are not vanishing: median ||g||/||w|| above this
    # (below it, the tiny updates come from the gradients, not the learning rate: see vanishing_gradients)
    lr_decay_factor: float = 10.0  # a scheduler that lowered the lr >= 10x from its peak makes tiny updates by design
    lr_warmup_rise: float = 1.1  # ... as does a warmup still raising it (by > 10% over the flat window)
    lr_collapse_dead_frac: float = 0.99  # too high: a ReLU layer this dead (alive at step 0) passes only a constant
    lr_collapse_std_frac: float = 1e-4  # ... or a layer whose output std fell below this fraction of its step-0 std
    # -- gradients ---------------------------------------------------------------------------
    vanish_ratio: float = 1e-3  # first/last layer gradient-norm ratio below this (repair system)
    vanish_abs: float = 1e-4  # ... and the first layer's gradient norm below this
    explode_ratio: float = 70.0  # first/last layer gradient-norm ratio above this (repair system)
    explode_growth: float = 100.0  # total gradient norm grown by this factor over the run
    explode_abs: float = 1e6  # total gradient norm above this
    vanish_rms: float = 1e-7  # vanished everywhere: first layer's RMS gradient below this (cloud debugger: mean|g|)
    vanish_update: float = 1e-6  # ... and its update/weight ratio below this (100x under research "too slow" 1e-4)
    # -- sustained evidence (layer rules) -------------------------------------------------------
    sustained_checks: int = 3  # a layer symptom must hold at this many consecutive logging steps (published: 3-5)
    # -- activations -------------------------------------------------------------------------
    dead_frac: float = 0.5  # > 50% of a ReLU layer's units dead (cloud debugger)
    sat_frac: float = 0.5  # > 50% of a tanh/sigmoid layer's outputs saturated
    collapse_ratio: float = 0.35  # geometric-mean act-std ratio per layer along the chain at most this (lecture's
    # 0.01*randn tanh table: 0.22/layer; PyTorch default init shrinks by at most 1/sqrt(6) = 0.41/layer: silent)
    collapse_link: float = 0.7  # a chain link: the next activation layer's std below this fraction of the previous
    collapse_min_layers: int = 3  # ... over at least this many consecutive links (no norm layer in between)
    collapse_std: float = 0.05  # ... ending below this std
    collapse_slow_link: float = 0.8  # a slow collapse: every link below this fraction of the previous std ...
    collapse_slow_links: int = 6  # ... over at least this many consecutive links (a deep stack) ...
    collapse_slow_total: float = 0.1  # ... shrinking >= 10x overall (Xavier init before ReLU: 0.71x per layer,
    # 0.06x over 9 hidden layers; Xavier-tanh drifts 0.78-0.95x per layer and He-ReLU ~1x: silent)
    dead_full_frac: float = 0.99  # a ReLU layer this dead passes no gradient (explains weights that never update)
    dead_min_samples: int = 8  # dead_frac is per batch: judged only over >= 8 samples (x positions) per unit (at
    # batch 1 a healthy unit is off half the time; at 8 a unit active 15% of the time looks dead in 27% of batches)
    # -- initialisation ----------------------------------------------------------------------
    init_scale_factor: float = 3.0  # weight std off the Xavier/He prescription by more than 3x (PyTorch's default
    # kaiming_uniform(a=sqrt(5)) gives std 1/sqrt(3 fan_in): 2.45x under He for ReLU, 1.73x under Xavier: silent)
    init_min_layers: int = 2  # ... in at least this many layers (lecture: small init is fine for shallow nets)
    init_min_numel: int = 64  # weight tensors smaller than this have too noisy a sample std to judge
    # -- input -------------------------------------------------------------------------------
    input_mean_abs: float = 1.0  # |input mean| above this (cloud debugger uses 0.2 for images)
    input_std_max: float = 10.0  # input std above this, or ...
    input_std_min: float = 0.01  # ... below this
    # -- initial loss ------------------------------------------------------------------------
    initial_loss_tolerance: float = 0.5  # |loss0 - ln C| / ln C above this
    initial_loss_ce_margin: float = 1.5  # cross-entropy is at most ln C + std(logits) * sqrt(2 ln C) (bound on the
    # mean max of C Gaussians) at step 0; a larger loss with an inferred C is not cross-entropy (regression): silent
    # -- overfitting -------------------------------------------------------------------------
    overfit_gap: float = 0.1  # (val - train) / train above this (research checker)
    overfit_patience: int = 3  # ... for this many validation checks, with no new best validation loss
    overfit_val_rise: float = 0.05  # or validation loss this far (5%) above its best (early-stopping practice)
    overfit_train_drop: float = 0.05  # ... while the training loss fell by at least this much (lecture: val rising
    # while train falls); a converged run with a constant generalisation gap is not flagged
    underfit_loss_frac: float = 0.8  # train loss still above this fraction of ln C (or of its start), flat, no gap
    # -- architecture ------------------------------------------------------------------------
    bn_min_batch: int = 8  # BatchNorm with a per-device batch below this
    # -- weights not updating ---------------------------------------------------------------
    frozen_checks: int = 3  # parameters identical over this many logging steps (published: 3-5 checks)
    frozen_checks_after_change: int = 10  # ... a parameter that moved earlier must stay identical this many checks
    # (alternating optimizers, e.g. a GAN generator stepped every 5th batch, leave short runs of zero updates)

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
