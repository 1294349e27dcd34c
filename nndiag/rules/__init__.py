"""Rule-based advisors: one module per family; importing this package registers them all.

Each rule owns its diagnosis code through :func:`~nndiag.rules.registry.rule` (severity, cause
order, what explains it, what it requires, its thresholds); see :mod:`nndiag.rules.registry`.
"""

from nndiag.rules import (  # noqa: F401  (imported for registration)
    activations,
    architecture,
    baseline,
    collapse,
    fit,
    gradients,
    init,
    initial,
    inputs,
    loss,
    loss_fit,
    lr,
    lr_low,
    nonfinite,
    output_activation,
    params,
    regularization,
    targets,
    training_length,
)
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import RULES, Rule, rule
from nndiag.rules.view import RunView

__all__ = ["RULES", "AdvisorConfig", "Rule", "RunView", "rule"]
