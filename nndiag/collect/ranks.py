"""Which process this is in a ``torch.distributed`` run, and the few collectives nndiag needs outside the exchange.

The packed exchange of statistics is :class:`nndiag.collect.distributed.RankCombiner`; these are the
helpers around it: whether this rank writes the run, which parameters are sharded (FSDP), a tensor's
local shard, and the all-ranks agreement at start.

Example:
    >>> writes_here(), agree(True)
    (True, True)
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from nndiag.guard import NndiagInternalWarning


def writes_here() -> bool:
    """Whether this process writes the run (rank 0 of a ``torch.distributed`` run, or no distributed run).

    Example:
        >>> writes_here()
        True

    """
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def sharded_parameters(model: torch.nn.Module) -> set[str]:
    """Names of parameters of which each rank holds only a shard (FSDP2 ``DTensor``, FSDP1 views).

    Example:
        >>> import torch.nn as nn
        >>> sharded_parameters(nn.Linear(2, 2))
        set()

    """
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1
    except ImportError:  # pragma: no cover - torch without distributed
        FSDP1 = ()  # type: ignore[assignment,misc]
    if any(isinstance(m, FSDP1) for m in model.modules()):
        return {n for n, _ in model.named_parameters()}
    return {n for n, p in model.named_parameters() if is_dtensor(p)}


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (a sharded parameter or gradient)."""
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t`` (the shard of a ``DTensor``; any other tensor as it is).

    Example:
        >>> import torch
        >>> local(torch.ones(2)).tolist()
        [1.0, 1.0]

    """
    return t.to_local() if is_dtensor(t) else t  # type: ignore[attr-defined]


def agree(ok: bool, group: Any = None) -> bool:
    """Whether every rank says ``ok`` (one small all-reduce; ``ok`` itself outside ``torch.distributed``).

    The adapters call it on every rank after setting up, so that a rank whose set-up failed
    switches combining off everywhere instead of leaving the others waiting in the first exchange.

    Example:
        >>> agree(True)
        True

    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) <= 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=collective_device())
    try:
        dist.all_reduce(flag, group=group)
    except Exception as exc:
        warnings.warn(
            f"nndiag: ranks could not agree at start ({type(exc).__name__}: {exc}); statistics are not combined.",
            NndiagInternalWarning,
            stacklevel=2,
        )
        return False
    return float(flag.item()) == 0.0


def collective_device() -> torch.device:
    """The device collectives run on: the current CUDA device under NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
