"""What the run asks the network to do, as the task rules read it (from the task facts).

The recorder's task probe (:mod:`nndiag.collect.task_probe`) stores ``facts["task"]``: the loss
kind read from the autograd graph, a summary of the targets, the output's shape and the loss of
the best constant prediction. :func:`task_of` turns it into a typed :class:`TaskView` and adds
the final activation (the graph's, else the last recorded module's). Every field may be unknown
(``None`` / ``"unknown"``): rules that need it stay quiet then.

Example:
    >>> import pandas as pd
    >>> from nndiag.rules.task_view import task_of
    >>> from nndiag.rules.view import RunView
    >>> facts = {"forward_order": ["fc", "act"], "layers": {"fc": {"kind": "linear"},
    ...          "act": {"kind": "activation", "activation": "sigmoid"}},
    ...          "task": {"loss": {"kind": "mse", "input_activation": None}, "target": {"min": -3.0, "max": 9.0}}}
    >>> t = task_of(RunView(pd.DataFrame(), facts))
    >>> t.loss_kind, t.final_activation, t.final_layer, t.target_range
    ('mse', 'sigmoid', 'act', (-3.0, 9.0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nndiag.diagnosis import Diagnosis, Severity
from nndiag.rules.layers import first_step
from nndiag.rules.view import RunView

REGRESSION_LOSSES = ("mse", "l1", "smooth_l1", "huber")
BINARY_LOSSES = ("bce", "bce_with_logits")
# activations of the output and the range of values they can produce
OUTPUT_RANGES: dict[str, tuple[float, float]] = {
    "sigmoid": (0.0, 1.0),
    "hardsigmoid": (0.0, 1.0),
    "softmax": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "hardtanh": (-1.0, 1.0),
    "softsign": (-1.0, 1.0),
    "relu": (0.0, math.inf),
    "relu6": (0.0, 6.0),
    "softplus": (0.0, math.inf),
}


@dataclass(frozen=True)
class TaskView:
    """The task facts of one run (all optional)."""

    loss_kind: str = "unknown"
    reduction: str = "unknown"
    scaled: bool = False
    loss_activation: str | None = None  # the activation that produced the loss input, from the graph
    note: str | None = None
    broadcast_from: tuple[int, ...] | None = None
    extra_terms: bool = False  # the loss node sits under a sum with other terms (a penalty, an auxiliary loss)
    target: dict[str, Any] = field(default_factory=dict)
    output_shape: tuple[int, ...] | None = None
    baseline: float | None = None
    shape_mismatch: dict[str, Any] | None = None
    broadcast_confirmed: bool = False  # the loss graph shows it averaged more elements than the model predicted
    final_activation: str | None = None  # the output's activation: the graph's, else the last module's
    final_layer: str | None = None  # the last recorded module when it is that activation

    @property
    def target_range(self) -> tuple[float, float] | None:
        """``(min, max)`` of the targets seen, or ``None``."""
        lo, hi = self.target.get("min"), self.target.get("max")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(lo) and math.isfinite(hi):
            return float(lo), float(hi)
        return None

    @property
    def looks_like(self) -> str | None:
        """What the targets look like (``class_indices``, ``probabilities``, ``continuous``, ...)."""
        value = self.target.get("looks_like")
        return str(value) if value is not None else None

    @property
    def output_width(self) -> int | None:
        """The size of the output's last dimension (1 for a single output unit)."""
        return int(self.output_shape[-1]) if self.output_shape else None


# (severity, message, suggestions, evidence) of a task check, turned into a Diagnosis by :func:`at_start`
Finding = tuple[Severity, str, list[str], dict[str, float]]


def at_start(view: RunView, code: str, found: Finding, layer: str | None = None) -> list[Diagnosis]:
    """A task finding as the diagnosis ``code`` from the run's first step (the task is wrong from the start)."""
    severity, message, suggestions, evidence = found
    return [
        Diagnosis(
            code=code,
            severity=severity,
            step=first_step(view),
            layer=layer,
            message=message,
            evidence=evidence,
            suggestions=suggestions,
        )
    ]


def task_of(view: RunView) -> TaskView:
    """The run's :class:`TaskView` (all unknown when the task was not recorded)."""
    raw = view.facts.extra.get("task") if hasattr(view.facts, "extra") else None
    task: dict[str, Any] = raw if isinstance(raw, dict) else {}
    loss: dict[str, Any] = task.get("loss") or {}
    target: dict[str, Any] = task.get("target") or {}
    output: dict[str, Any] = task.get("output") or {}
    final_layer, module_act = _last_activation(view)
    graph_act = loss.get("input_activation")
    final = graph_act if graph_act not in (None, "none") else module_act
    if graph_act == "none" and module_act is None:
        final = "none"
    baseline = task.get("baseline_loss")
    shape = output.get("shape")
    return TaskView(
        loss_kind=str(loss.get("kind") or "unknown"),
        reduction=str(loss.get("reduction") or "unknown"),
        scaled=bool(loss.get("scaled")),
        loss_activation=graph_act,
        note=loss.get("note"),
        broadcast_from=tuple(loss["broadcast_from"]) if loss.get("broadcast_from") else None,
        extra_terms=bool(loss.get("extra_terms")),
        target=target,
        output_shape=tuple(int(s) for s in shape) if isinstance(shape, list) and shape else None,
        baseline=float(baseline) if isinstance(baseline, (int, float)) and math.isfinite(baseline) else None,
        shape_mismatch=task.get("shape_mismatch"),
        broadcast_confirmed=bool(task.get("broadcast_confirmed")) or _reduced_broadcast(loss, shape),
        final_activation=final,
        final_layer=final_layer if final == module_act else None,
    )


def _reduced_broadcast(loss: dict[str, Any], output_shape: Any) -> bool:
    """A hand-written MSE/L1 whose reduction averaged more elements than the model predicted (a broadcast)."""
    reduced = loss.get("reduced_shape")
    if loss.get("kind") not in ("mse", "l1") or not isinstance(reduced, list) or not isinstance(output_shape, list):
        return False
    return bool(output_shape) and math.prod(int(s) for s in reduced) > math.prod(int(s) for s in output_shape)


def _last_activation(view: RunView) -> tuple[str | None, str | None]:
    """The last recorded module and its activation family, when the forward pass ends in an activation."""
    order = view.forward_order
    if not order:
        return None, None
    last = view.layer(order[-1])
    if last.kind == "activation" and last.activation:
        return order[-1], str(last.activation)
    return None, None
