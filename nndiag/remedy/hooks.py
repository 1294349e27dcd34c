"""Optimizer step hooks of the remedy: the learning-rate factor, and skipping NaN/Inf steps.

* The cut persists as a factor on top of whatever sets the learning rate (a scheduler, the user's
  code): the pre-step hook multiplies every parameter group's ``lr`` by the factor and the post-step
  hook puts the scheduled value back, so the step uses ``scheduled_lr * factor`` and every scheduler
  (closed-form or chainable) keeps computing from its own values.
* A step whose gradients hold NaN/Inf (a batch whose input or loss was NaN/Inf poisons them) is
  skipped: its gradients are dropped before the update, so ``optimizer.step()`` changes nothing
  (torch optimizers skip parameters without a gradient, as Lightning does for a ``None`` loss).
  The check is one fused reduction over the gradients and one host sync per step, only with
  ``skip_nonfinite``. Under DDP the gradients are already all-reduced, so every rank decides alike.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.remedy.hooks import StepHooks
    >>> model = nn.Linear(2, 1); opt = torch.optim.SGD(model.parameters(), lr=0.5)
    >>> hooks = StepHooks([opt], skip_nonfinite=True); hooks.attach()
    >>> model(torch.tensor([[float("nan"), 1.0]])).sum().backward()
    >>> before = model.weight.clone(); opt.step()
    >>> bool(torch.equal(before, model.weight)), hooks.skipped
    (True, 1)
    >>> hooks.factor = 0.1; opt.param_groups[0]["lr"]
    0.5
    >>> hooks.detach()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class StepHooks:
    """Applies the learning-rate factor around each step and drops the gradients of poisoned steps."""

    def __init__(self, optimizers: Sequence[Any], skip_nonfinite: bool = True) -> None:
        self.optimizers = [o for o in optimizers if hasattr(o, "register_step_pre_hook")]
        self.skip_nonfinite = skip_nonfinite
        self.factor = 1.0
        self.skipped = 0  # steps skipped so far
        self.skipped_in_row = 0
        self.skipped_steps: list[int] = []  # the steps skipped since the owner last took them
        self.on_skip: Callable[[], int] | None = None  # returns the step being skipped (for the record)
        self._saved: dict[int, list[Any]] = {}
        self._handles: list[Any] = []
        self._skipping = False  # the step in progress was skipped

    def attach(self) -> None:
        """Register the hooks (before nndiag's recorder, so that it records the learning rate used)."""
        for opt in self.optimizers:
            self._handles.append(opt.register_step_pre_hook(self._pre))
            self._handles.append(opt.register_step_post_hook(self._post))

    def detach(self) -> None:
        """Remove every hook; put back scheduled learning rates a failed step left scaled."""
        for opt in self.optimizers:
            self._unscale(opt)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def check(self, optimizer: Any) -> bool:
        """Skip the coming step of ``optimizer`` if its gradients hold NaN/Inf; whether it was skipped.

        Called by the pre-step hook (plain loops, Hugging Face), or by an adapter once the gradients
        are final (Lightning: ``on_before_optimizer_step``, inside a closure-driven step).
        """
        if not self.skip_nonfinite:
            return False
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads or _finite(grads):
            return False
        for g in optimizer.param_groups:
            for p in g["params"]:
                p.grad = None  # torch optimizers leave a parameter without a gradient unchanged
        if not self._skipping:
            self._skipping = True
            self.skipped += 1
            self.skipped_in_row += 1
            if self.on_skip is not None:
                self.skipped_steps.append(self.on_skip())
        return True

    def _pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._unscale(optimizer)  # a step that raised left its learning rates scaled
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args: (optimizer, *step's args)
        if closure is None:  # with a closure the gradients do not exist yet (the adapter checks them)
            self.check(optimizer)
        if self.factor != 1.0:
            saved = []
            for g in optimizer.param_groups:
                lr = g.get("lr")
                saved.append(lr.clone() if isinstance(lr, torch.Tensor) else lr)
                if isinstance(lr, torch.Tensor):
                    lr.mul_(self.factor)
                elif lr is not None:
                    g["lr"] = lr * self.factor
            self._saved[id(optimizer)] = saved

    def _post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._unscale(optimizer)
        if not self._skipping:
            self.skipped_in_row = 0  # a step was applied: the run of skipped steps is over

    def end_step(self) -> None:
        """The optimizer step (all optimizers of one batch) is over."""
        self._skipping = False

    def _unscale(self, optimizer: Any) -> None:
        saved = self._saved.pop(id(optimizer), None)
        if saved is None:
            return
        for g, lr in zip(optimizer.param_groups, saved, strict=False):
            if isinstance(lr, torch.Tensor) and isinstance(g.get("lr"), torch.Tensor):
                g["lr"].copy_(lr)
            else:
                g["lr"] = lr


def _finite(grads: list[torch.Tensor]) -> bool:
    """Whether every gradient is finite: one fused reduction, one host sync."""
    norms = torch._foreach_norm(grads, float("inf"))  # max |g|: NaN/Inf only for a NaN/Inf element
    return bool(torch.isfinite(torch.stack([n.to(norms[0].device) for n in norms])).all())
