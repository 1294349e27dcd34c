"""The loss of each optimizer step under the Hugging Face Trainer, as the Trainer computes it.

The Trainer passes no loss to its callbacks. :class:`StepLoss` wraps the Trainer's
``training_step`` for the duration of a run (an instance attribute, removed at the end) and
keeps what it returns for every micro-batch, summed over the optimizer step, on the device:
that sum is the loss the Trainer back-propagates and logs (its micro-batch losses are already
divided for gradient accumulation), a user ``compute_loss`` / ``compute_loss_func`` included,
and a NaN stays a NaN (the Trainer's ``logging_nan_inf_filter`` acts after ``training_step``).

Without the Trainer object (found from the call stack), a forward hook on the model reads its
``ModelOutput.loss`` instead, averaged over the step's micro-batches.

Example:
    >>> import torch
    >>> from nndiag.integrations.hf_loss import StepLoss
    >>> class FakeTrainer:
    ...     def training_step(self, model, inputs, num_items_in_batch=None):
    ...         return torch.tensor(inputs)
    >>> trainer, loss = FakeTrainer(), StepLoss()
    >>> loss.watch(trainer, torch.nn.Linear(1, 1))
    >>> _ = trainer.training_step(None, 0.25); _ = trainer.training_step(None, 0.5)
    >>> float(loss.take()), loss.take()
    (0.75, None)
    >>> loss.unwatch(); "training_step" in vars(trainer)
    False
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nndiag.guard import ErrorGuard


class StepLoss:
    """Collects the micro-batch losses of the current optimizer step (see the module docstring)."""

    def __init__(self, guard: ErrorGuard | None = None) -> None:
        self.guard = guard or ErrorGuard()
        self._sum: torch.Tensor | None = None
        self._parts: list[torch.Tensor] = []  # forward-hook fallback: averaged
        self._patched: tuple[Any, Any, Any] | None = None  # (trainer, wrapper, what it replaced)
        self._hook: Any = None

    def watch(self, trainer: Any, model: torch.nn.Module) -> None:
        """Wrap ``trainer.training_step``; with ``trainer=None``, hook ``model``'s output loss instead."""
        self.unwatch()
        if trainer is not None:
            replaced = trainer.__dict__.get("training_step")
            original = trainer.training_step

            def training_step(*args: Any, **kwargs: Any) -> Any:
                loss = original(*args, **kwargs)
                self.guard.run("loss", self._add, loss)
                return loss

            trainer.training_step = training_step
            self._patched = (trainer, training_step, replaced)
        else:
            self._hook = model.register_forward_hook(self._output_loss)

    def _output_loss(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if module.training:
            loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
            if isinstance(loss, torch.Tensor):
                self.guard.run("loss", self._parts.append, loss.detach().float().mean())

    def _add(self, loss: Any) -> None:
        if isinstance(loss, torch.Tensor):
            value = loss.detach().float().mean()  # stays on the device: no host sync
            self._sum = value if self._sum is None else self._sum + value.to(self._sum.device)

    def take(self) -> torch.Tensor | None:
        """The step's loss (``None`` when no micro-batch reported one); starts the next step."""
        total, parts = self._sum, self._parts
        self.reset()
        if total is not None:
            return total
        if parts:
            return torch.stack([p.to(parts[0].device) for p in parts]).mean()
        return None

    def reset(self) -> None:
        """Forget the current step's losses."""
        self._sum, self._parts = None, []

    def unwatch(self) -> None:
        """Remove the wrapper (the Trainer's own ``training_step`` again) or the hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._patched is not None:
            trainer, wrapper, replaced = self._patched
            self._patched = None
            if trainer.__dict__.get("training_step") is wrapper:
                if replaced is None:
                    del trainer.training_step
                else:
                    trainer.training_step = replaced
        self.reset()
