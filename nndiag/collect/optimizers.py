"""Finding the torch optimizer (and model) inside the wrappers that training frameworks put around them.

nndiag counts optimizer steps with the torch optimizer's own step hooks. Frameworks hand
the user a wrapper instead: Accelerate's ``AcceleratedOptimizer`` (a subclass of
``torch.optim.Optimizer`` that never runs ``Optimizer.__init__``, so its own hook registries
do not exist), Lightning Fabric's ``_FabricOptimizer``, DeepSpeed-style wrappers. Each keeps
the real optimizer in ``.optimizer`` (Fabric also in ``._optimizer``); its ``step`` ends in
the real optimizer's ``step``, so hooking the real one counts exactly the steps that ran
(a step Accelerate skips under gradient accumulation, or a GradScaler skips on overflow,
runs no hook).

:func:`unwrap_optimizer` follows those links until it reaches an object whose step hooks
work, or returns ``None``. The adapters then fall back to counting every ``Monitor.step``
call as an optimizer step, with one warning (:func:`hookable_or_fallback`).

:func:`unwrap_module` does the same for the model: Fabric's ``_FabricModule`` and a
``DistributedDataParallel`` wrapper are replaced by the user's module, so layers keep the
names they have in the user's code (``encoder.0``, not ``_forward_module.encoder.0``). The
forward hooks still run, since the wrappers call the module they wrap. Sharding wrappers
(FSDP) are left as they are.

Example:
    >>> import torch
    >>> from nndiag.collect.optimizers import unwrap_optimizer
    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    >>> class Wrapper:
    ...     def __init__(self, optimizer):
    ...         self.optimizer = optimizer
    >>> unwrap_optimizer(Wrapper(Wrapper(opt))) is opt
    True
    >>> unwrap_optimizer(object()) is None
    True

"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from nndiag.guard import NndiagInternalWarning

# attributes under which wrappers keep the optimizer they wrap, most common first
_INNER = ("optimizer", "_optimizer", "optim", "_optim")
_MAX_DEPTH = 8  # wrappers of wrappers; a cycle ends here too


def hookable(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a torch optimizer whose step hooks can be registered.

    A subclass of ``torch.optim.Optimizer`` that skipped ``Optimizer.__init__`` (Accelerate's wrapper)
    lacks the hook registries in its own ``__dict__`` and is not hookable.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        return False
    own = getattr(optimizer, "__dict__", {})
    return "_optimizer_step_pre_hooks" in own and "_optimizer_step_post_hooks" in own and "param_groups" in own


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer whose step hooks count ``optimizer``'s steps, or ``None`` if there is none.

    Follows ``.optimizer`` (and ``._optimizer``, ``.optim``) links through wrappers. Never raises.
    """
    current = optimizer
    for _ in range(_MAX_DEPTH):
        if hookable(current):
            return current
        inner = None
        for name in _INNER:
            try:  # attributes, properties (Fabric's ``optimizer``) and ``__getattr__`` delegation
                candidate = getattr(current, name, None)
            except Exception:
                candidate = None
            if candidate is not None and candidate is not current:
                inner = candidate
                break
        if inner is None:
            return None
        current = inner
    return None


class UnhookedOptimizer:
    """Stands for an optimizer nndiag cannot hook: exposes its ``param_groups`` only.

    The recorder registers no step hook on it, so every ``end_batch`` (``Monitor.step``)
    counts as one optimizer step; learning rates and optimizer facts are still read.
    """

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped object's parameter groups (empty when it has none)."""
        try:
            groups = self.wrapped.param_groups
        except Exception:
            return []
        return list(groups) if isinstance(groups, (list, tuple)) else []


def hookable_or_fallback(optimizer: Any) -> Any:
    """``optimizer`` unwrapped for the recorder; an :class:`UnhookedOptimizer` (one warning) if impossible."""
    inner = unwrap_optimizer(optimizer)
    if inner is not None:
        return inner
    warnings.warn(
        f"nndiag: cannot hook the step of the optimizer {type(optimizer).__name__} (no torch optimizer found "
        "inside it); every mon.step() call now counts as one optimizer step, so under gradient accumulation "
        "call mon.step() once per optimizer step, or pass the torch optimizer itself.",
        NndiagInternalWarning,
        stacklevel=3,
    )
    # a subclass named like the user's optimizer, so that the run's optimizer facts name it
    named = type(type(optimizer).__name__, (UnhookedOptimizer,), {"__module__": __name__})
    return named(optimizer)


def unwrap_module(model: Any) -> Any:
    """The user's module inside Fabric's ``_FabricModule`` and ``DistributedDataParallel``; else ``model``.

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(2, 2)
        >>> unwrap_module(lin) is lin
        True
    """
    from torch.nn.parallel import DistributedDataParallel

    current = model
    for _ in range(_MAX_DEPTH):
        try:
            if type(current).__name__ == "_FabricModule":
                original = current._original_module
                forward = current._forward_module
                inner = forward.module if isinstance(forward, DistributedDataParallel) else forward
                if inner is not original:  # a sharding strategy wraps it: keep Fabric's module
                    return current
                current = original
            elif isinstance(current, DistributedDataParallel):
                current = current.module
            else:
                return current
        except Exception:
            return current
    return current
