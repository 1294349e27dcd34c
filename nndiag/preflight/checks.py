"""The diagnoses one forward pass supports, from nndiag's own rules on the one-step history.

The rules are the ones a run uses (:mod:`nndiag.rules`), evaluated once on the step-0 history
and facts of :func:`~nndiag.preflight.forward.forward_pass`. A run requires layer symptoms at
``sustained_checks`` (3) consecutive logging steps; a preflight has exactly one, so it judges
with ``sustained_checks=1`` (all other thresholds as configured).

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.preflight.checks import forward_diagnoses
    >>> from nndiag.preflight.forward import forward_pass
    >>> from nndiag.rules.config import AdvisorConfig
    >>> fwd = forward_pass(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), torch.randn(64, 8) * 100 + 50)
    >>> [d.code for d in forward_diagnoses(fwd.history, fwd.facts, AdvisorConfig())]
    ['input_not_normalized']
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from nndiag.advisor import Advisor, by_severity
from nndiag.diagnosis import Diagnosis
from nndiag.facts import ModelFacts
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import RULES
from nndiag.rules.view import RunView

# Rules that can judge a model before training, by their registered name (a rule may emit related codes).
PREFLIGHT_RULES = (
    "nonfinite_activations",
    "nonfinite_loss",
    "output_activation_mismatch",  # the task checks that need no training: the output, the loss, the targets
    "loss_mismatch",
    "target_not_normalized",
    "input_not_normalized",
    "symmetric_init",
    "poor_init_scale",
    "sigmoid_hidden_layer",
    "activation_collapse",
    "saturated_activations",
    "dead_units",
    "initial_loss_off",
)
PREFLIGHT_CODES = (*PREFLIGHT_RULES, "nonfinite_input")


def forward_diagnoses(
    history: pd.DataFrame, facts: ModelFacts | dict[str, Any], config: AdvisorConfig
) -> list[Diagnosis]:
    """Diagnoses of a one-step history, most severe and most causal first (:func:`~nndiag.advisor.by_severity`)."""
    advisor = Advisor(config.replace(sustained_checks=1), rules=[RULES[name] for name in PREFLIGHT_CODES])
    advisor.check(RunView(history, facts))
    return by_severity(d for d in advisor.diagnoses if d.code in PREFLIGHT_CODES)
