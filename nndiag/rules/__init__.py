"""Rule-based advisors: one module per family; importing this package registers them all."""

from nndiag.rules import (  # noqa: F401  (imported for registration)
    activations,
    architecture,
    gradients,
    inputs,
    loss,
    lr,
    params,
)
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import RULES, Rule, rule
from nndiag.rules.view import RunView

__all__ = ["RULES", "AdvisorConfig", "Rule", "RunView", "rule"]
