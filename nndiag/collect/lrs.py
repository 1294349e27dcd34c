"""Learning rates as the optimizer step used them, and the optimizer step's closure.

Example:
    >>> import torch
    >>> from nndiag.collect.lrs import lr_entries, lr_copy
    >>> opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    >>> used = {id(opt): [lr_copy(g["lr"]) for g in opt.param_groups]}
    >>> opt.param_groups[0]["lr"] = 0.05  # a scheduler stepped after the optimizer
    >>> lr_entries([opt], used)
    ([], [], [('optimizer', 'lr', 0.1)])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from nndiag import quantities as Q


def lr_copy(lr: Any) -> Any:
    """A learning rate as it is now (tensor learning rates are updated in place by schedulers)."""
    return lr.detach().clone() if isinstance(lr, torch.Tensor) else lr


def lr_entries(
    optimizers: Sequence[torch.optim.Optimizer], used: dict[int, list[Any]]
) -> tuple[list[tuple[str, str]], list[torch.Tensor], list[tuple[str, str, float]]]:
    """``(keys, device values, host values)`` of each param group's learning rate.

    ``used``: each optimizer's learning rates read before its step ran (a scheduler may have stepped
    since); groups without one report their current ``lr``. Names: ``optimizer``, or
    ``optimizer{k}.group{j}`` when there are several optimizers or groups.
    """
    keys: list[tuple[str, str]] = []
    scalars: list[torch.Tensor] = []
    extras: list[tuple[str, str, float]] = []
    for k, opt in enumerate(optimizers):
        lrs = used.get(id(opt))
        for j, group in enumerate(opt.param_groups):
            lr = lrs[j] if lrs is not None and j < len(lrs) else group.get("lr")
            name = f"optimizer{k}.group{j}" if len(optimizers) > 1 or len(opt.param_groups) > 1 else "optimizer"
            if isinstance(lr, torch.Tensor):
                keys.append((name, Q.LR))
                scalars.append(lr.detach())
            elif lr is not None:
                extras.append((name, Q.LR, float(lr)))
    return keys, scalars, extras


def step_closure(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
    """The closure passed to ``optimizer.step`` (Lightning always passes one), else ``None``."""
    positional = [a for a in args if a is not optimizer]  # the step hooks' args start with the optimizer
    closure = kwargs.get("closure", positional[0] if positional else None)
    return closure if callable(closure) else None
