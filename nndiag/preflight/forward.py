"""One recorded forward pass through the untrained model: step 0 of a run, without training it.

The pass goes through nndiag's own :class:`~nndiag.collect.recorder.Recorder` (the hooks, on-device
reductions and model facts of a real run), so the one-step history is exactly what a run records at
step 0 and the advisors read it unchanged. The model runs in training mode (as at the first
training step: dropout active, BatchNorm on batch statistics) under ``torch.no_grad()``.

Nothing of the user's model changes: the hooks are removed, every module's ``training`` flag is
restored, and the buffers a training-mode pass updates (BatchNorm running statistics and
``num_batches_tracked``) are put back. Weights are never written (no backward, no optimizer).

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.preflight.forward import forward_pass
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    >>> fwd = forward_pass(model, torch.randn(16, 4))
    >>> fwd.table.kind.tolist(), model.training
    (['Linear', 'Tanh', 'Linear'], False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from nndiag import quantities as Q
from nndiag.collect.packet import Packet
from nndiag.collect.recorder import Recorder
from nndiag.facts import ModelFacts
from nndiag.guard import ErrorGuard
from nndiag.pivot import pivot_last
from nndiag.preflight.loss import LossFn, loss_value
from nndiag.rows import COLUMNS

# Statistics a forward pass yields; gradient/weight statistics need a backward pass and are dropped.
FORWARD_STATS = (Q.ACT_MEAN, Q.ACT_STD, Q.NONFINITE, Q.DEAD_FRAC, Q.SAT_FRAC, Q.LOSS)
TABLE_COLUMNS = ["layer", "kind", "mean", "std", Q.DEAD_FRAC, Q.SAT_FRAC]


@dataclass
class ForwardResult:
    """What one forward pass revealed.

    Attributes:
        history: long-format rows (step 0, layer, stat, value), as in a run's ``history``.
        facts: model facts, as in a run's ``facts`` (forward order, kinds, initial weights).
        table: one row per recorded module in forward order: layer, kind, mean, std, dead_frac, sat_frac.
        output: the model's output (detached).
        loss: ``loss_fn(output, target)`` as a float, or ``None`` without a loss function or target.
    """

    history: pd.DataFrame
    facts: ModelFacts
    table: pd.DataFrame
    output: Any
    loss: float | None


def forward_pass(model: nn.Module, x: Any, y: Any = None, loss_fn: LossFn | None = None) -> ForwardResult:
    """Run ``model(x)`` once with nndiag's recorder attached and return the step-0 statistics.

    Raises:
        ValueError: when the model's forward pass or the loss function fails on the batch
            (the original exception is chained).
    """
    packets: list[Any] = []
    modes = [(m, m.training) for m in model.modules()]
    saved = _buffers(model)
    recorder = Recorder(model, [], submit=packets.append, schedule=1, guard=ErrorGuard())
    try:
        recorder.attach()
        model.train()
        recorder.begin_batch()
        # with autograd on (no backward ever runs): the loss's graph tells its kind (nothing is kept)
        with torch.enable_grad():
            try:
                output = model(x)
            except Exception as exc:
                raise ValueError(
                    f"the model's forward pass failed on the batch input ({type(exc).__name__}: {exc}); "
                    "check that the batch's input (its first item) is what model(x) expects."
                ) from exc
            loss = None
            if loss_fn is not None and y is not None:
                try:
                    loss = loss_fn(output, y)
                except Exception as exc:
                    raise ValueError(
                        f"loss_fn(output, target) failed ({type(exc).__name__}: {exc}); check that the batch's "
                        "target (its second item) matches the model output and the loss function."
                    ) from exc
        recorder.end_batch(loss, target=y if isinstance(y, torch.Tensor) else None)
    finally:
        recorder.close()
        for module, training in modes:
            module.training = training
        _restore(model, saved)
    history, facts = _collect(packets)
    return ForwardResult(history, facts, build_table(history, facts), _detach(output), _loss(loss))


def build_table(history: pd.DataFrame, facts: ModelFacts | dict[str, Any]) -> pd.DataFrame:
    """The lecture's per-layer table from a one-step history: rows in forward order, NaN where a stat does not apply.

    Example:
        >>> h = pd.DataFrame({"step": [0, 0], "layer": ["fc", "fc"], "stat": ["act_mean", "act_std"],
        ...                   "value": [0.0, 0.5]})
        >>> print(build_table(h, {"forward_order": ["fc"], "layers": {"fc": {"module_type": "Linear"}}}).to_string())
          layer    kind  mean  std  dead_frac  sat_frac
        0    fc  Linear   0.0  0.5        NaN       NaN
    """
    wide = pivot_last(history, "layer", "stat") if len(history) else None
    known = ModelFacts.from_dict(facts)
    rows = []
    for name in known.forward_order:
        if wide is None or name not in wide.index or Q.ACT_STD not in wide.columns:
            continue
        stats = wide.loc[name]
        if not isinstance(stats.get(Q.ACT_STD), float) or math.isnan(stats[Q.ACT_STD]):
            continue
        rows.append(
            [
                name,
                str(known.layer(name).module_type or ""),
                float(stats.get(Q.ACT_MEAN, math.nan)),
                float(stats[Q.ACT_STD]),
                float(stats.get(Q.DEAD_FRAC, math.nan)),
                float(stats.get(Q.SAT_FRAC, math.nan)),
            ]
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS).astype(
        {"layer": object, "kind": object, "mean": float, "std": float, Q.DEAD_FRAC: float, Q.SAT_FRAC: float}
    )


def _collect(packets: list[Any]) -> tuple[pd.DataFrame, ModelFacts]:
    frames = [p.decode().frame() for p in packets if isinstance(p, Packet)]
    facts = ModelFacts.from_dict(next((p[1] for p in packets if isinstance(p, tuple) and p[0] == "facts"), None))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS}), facts
    history = pd.concat(frames, ignore_index=True)
    history = history[history.stat.isin(FORWARD_STATS)].reset_index(drop=True)
    return history, facts


def _buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of every materialised buffer (a training-mode pass updates BatchNorm's)."""
    out = []
    for b in model.buffers():
        if isinstance(b, torch.Tensor) and not nn.parameter.is_lazy(b):
            out.append((b, b.detach().clone()))
    return out


def _restore(model: nn.Module, saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for live, copy in saved:
            if live.shape == copy.shape:
                live.copy_(copy)


def _detach(obj: Any) -> Any:
    return obj.detach() if isinstance(obj, torch.Tensor) else obj


def _loss(loss: Any) -> float | None:
    return None if loss is None else loss_value(loss)
