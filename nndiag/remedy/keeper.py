"""Good states: rolling host-memory copies of the model's and the optimizers' state.

At most three copies: up to two *pending* ones, taken while the run looks healthy, and the *good*
one, a pending copy that the advisors have since seen ``confirm_steps`` healthy steps past (they run
a few steps behind training, so a fresh copy is not trusted yet). Copies reuse their buffers (one
host allocation per tensor, reused for the whole run); each copy costs one device-to-host copy of
the weights, buffers and optimizer state (e.g. Adam: 3x the weights), and the slots hold up to
three times that in host memory.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.remedy.keeper import StateKeeper
    >>> model = nn.Linear(2, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> keeper = StateKeeper(model, [opt])
    >>> keeper.take(5); keeper.promote(0); keeper.good.step
    5
    >>> with torch.no_grad(): _ = model.weight.fill_(7.0)
    >>> keeper.restore(keeper.good); float(model.weight.max()) != 7.0
    True
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

MAX_PENDING = 2  # with the good copy: at most three copies in host memory


@dataclass
class GoodState:
    """One copy: the step after which it was taken, the learning-rate factor then in force, the states."""

    step: int
    factor: float
    model: dict[str, Any] = field(default_factory=dict)
    optimizers: list[dict[str, Any]] = field(default_factory=list)


class StateKeeper:
    """Takes, promotes and restores good states of one model and its optimizers."""

    def __init__(self, model: nn.Module, optimizers: Sequence[Any], device: str = "cpu") -> None:
        self.model = model
        self.optimizers = list(optimizers)
        self.device = torch.device(device)
        self.pending: list[GoodState] = []  # oldest first, at most MAX_PENDING
        self.good: GoodState | None = None
        self._spare: GoodState | None = None  # a slot no longer in use: its buffers are reused

    def take(self, step: int, factor: float = 1.0) -> None:
        """Copy the current state into a new pending slot (reusing the buffers of a dropped one)."""
        full = len(self.pending) >= MAX_PENDING
        slot = self.pending.pop(0) if full else self._spare or GoodState(step, factor)
        self._spare = None
        slot.step, slot.factor = step, factor
        slot.model = _copy_into(self.model.state_dict(), slot.model, self.device)
        old = slot.optimizers
        slot.optimizers = [
            _copy_into(opt.state_dict(), old[i] if i < len(old) else None, self.device)
            for i, opt in enumerate(self.optimizers)
        ]
        self.pending.append(slot)

    def promote(self, index: int) -> None:
        """Pending copy ``index`` becomes the good state; older pending copies and the old good one go."""
        if 0 <= index < len(self.pending):
            self._spare = self.good
            self.good = self.pending[index]
            self.pending = self.pending[index + 1 :]
            if len(self.pending) >= MAX_PENDING:  # never more than three copies in all
                self._spare = None

    def newest_pending(self, before: int) -> int:
        """The index of the newest pending copy taken at or before step ``before``, else -1."""
        return max((i for i, s in enumerate(self.pending) if s.step <= before), default=-1)

    def discard_pending(self) -> None:
        """Forget the pending copies (the run goes on from a restored state)."""
        if self.pending:
            self._spare = self.pending[-1] if self._spare is None else self._spare
            self.pending = []

    def restore(self, state: GoodState) -> None:
        """Load ``state`` into the model (in place) and the optimizers; drop every gradient."""
        with torch.no_grad():
            self.model.load_state_dict(state.model)
        for opt, saved in zip(self.optimizers, state.optimizers, strict=False):
            opt.load_state_dict(copy.deepcopy(saved))  # the optimizer keeps what it loads: the slot stays intact
            opt.zero_grad(set_to_none=True)

    def nbytes(self) -> int:
        """Host bytes held by the copies."""
        slots = [*self.pending, self.good, self._spare]
        return sum(_nbytes(s.model) + _nbytes(s.optimizers) for s in slots if s is not None)


def _copy_into(value: Any, buffer: Any, device: torch.device) -> Any:
    """A detached copy of ``value`` (nested dicts/lists of tensors) on ``device``, into ``buffer`` where it fits."""
    if isinstance(value, torch.Tensor):
        if (
            isinstance(buffer, torch.Tensor)
            and buffer.shape == value.shape
            and buffer.dtype == value.dtype
            and buffer.device == device
        ):
            buffer.copy_(value.detach())
            return buffer
        return value.detach().to(device, copy=True)
    if isinstance(value, dict):
        old = buffer if isinstance(buffer, dict) else {}
        return {k: _copy_into(v, old.get(k), device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        old_seq = buffer if isinstance(buffer, (list, tuple)) and len(buffer) == len(value) else [None] * len(value)
        out = [_copy_into(v, b, device) for v, b in zip(value, old_seq, strict=True)]
        return type(value)(out) if isinstance(value, tuple) else out
    return copy.deepcopy(value)


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0
