"""The training loss of every optimizer step, kept on the device until a packet carries it.

The loss is recorded at every step whatever the schedule, but reading it (``.item()``) would
synchronise the device at every step. So each batch's loss is kept as a detached 0-d tensor; at
the end of an optimizer step the batches' losses (gradient accumulation: several) become one
value for the step, and the values of the steps since the last packet travel, stacked, with the
next logging packet (or a loss-only packet when too many are pending).

Example:
    >>> import torch
    >>> from nndiag.collect.step_losses import StepLosses
    >>> losses = StepLosses()
    >>> losses.keep(torch.tensor(2.0)); losses.keep(torch.tensor(4.0))  # two micro-batches
    >>> losses.end_step(0)
    >>> losses.keep(1.5); losses.end_step(1)  # a Python float is accepted too
    >>> values, steps = losses.take()
    >>> values.tolist(), steps, len(losses)
    ([3.0, 1.5], [0, 1], 0)

"""

from __future__ import annotations

from typing import Any

import torch


class StepLosses:
    """The losses of the step in progress (``keep``) and of the finished steps not yet sent (``take``)."""

    def __init__(self) -> None:
        self._micro: list[torch.Tensor] = []  # the batches of the optimizer step in progress
        self._pending: list[torch.Tensor] = []  # one 0-d tensor per finished step, not yet sent
        self._steps: list[int] = []

    def __len__(self) -> int:
        """How many finished steps' losses wait for a packet."""
        return len(self._pending)

    def keep(self, loss: Any) -> None:
        """One batch's loss (a tensor, kept detached on its device, or a number)."""
        if isinstance(loss, torch.Tensor):
            if loss.dim() == 0:  # the usual case: one op (each costs microseconds just after a step)
                self._micro.append(loss.detach())
                return
            if loss.numel() != 1:
                loss = loss.detach().float().mean()
            self._micro.append(loss.detach().reshape(()))
        else:
            self._micro.append(torch.tensor(float(loss)))

    def drop_step(self) -> None:
        """Forget the batches' losses of the step in progress (it was skipped: nothing came of it)."""
        self._micro = []

    def end_step(self, step: int) -> None:
        """The step in progress finished as optimizer step ``step``: its batches' mean loss waits for a packet."""
        losses, self._micro = self._micro, []
        if not losses:
            return
        if len(losses) == 1:
            loss = losses[0]
        else:
            device = losses[0].device
            loss = torch.stack([x.to(device).float() for x in losses]).mean()
        self._pending.append(loss)
        self._steps.append(step)

    def take(self) -> tuple[torch.Tensor | None, list[int]]:
        """The waiting losses as one float tensor on the latest one's device and their steps; then none wait."""
        if not self._pending:
            return None, []
        device = self._pending[-1].device
        losses = torch.stack([x.to(device).float() for x in self._pending])
        steps = self._steps
        self._pending, self._steps = [], []
        return losses, steps
