"""Per-parameter gradient norms, weight norms and update/weight ratios, on the device.

The update ratio ``||w_after - w_before|| / ||w_before||`` is measured on the real
parameters around the optimizer step, so it is right for SGD, Adam or any optimizer.
In ``"exact"`` mode one copy of the trainable parameters is held from the optimizer's
pre-step to the end of the logging step (kept across consecutive logging steps, freed
before a non-logging step); the distance is computed fused, so no second copy is made.
Where the optimizer's own update is exposed, no copy is made at all: ``torch.optim.SGD``
with momentum (not Nesterov, not fused) moves each parameter by exactly ``lr * buf``, its
momentum buffer after the step, so ``||w_after - w_before|| = lr * ||buf||`` (see
:func:`sgd_update_plan`): two passes over the parameters instead of six, and no copy in memory.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.collect.params import ParamCollector
    >>> model = nn.Linear(3, 2)
    >>> col = ParamCollector(model, "exact", 16)
    >>> model.weight.grad = torch.ones_like(model.weight)
    >>> col.capture_grads(); col.snapshot()
    >>> with torch.no_grad():
    ...     _ = model.weight.mul_(1.5)
    >>> keys, values = col.pack()
    >>> raw = dict(zip(keys, [float(v) for v in values]))
    >>> round(raw[("weight", "_delta")] / raw[("weight", "_wb")], 4)
    0.5

"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from nndiag import quantities as Q
from nndiag.collect.distributed import local
from nndiag.collect.modules import clean_name
from nndiag.stats.params import norm_list, norms


class ParamCollector:
    """Gradient/weight statistics of a model's trainable parameters for one step at a time."""

    def __init__(self, model: nn.Module, mode: str = "exact", samples: int = 4096) -> None:
        self.mode = mode
        self.samples = samples
        named = [(clean_name(n), p) for n, p in model.named_parameters()]
        self.named: list[tuple[str, nn.Parameter]] = [(n, p) for n, p in named if p.requires_grad]
        self.frozen: list[str] = [n for n, p in named if not p.requires_grad]
        self.index = {id(p): i for i, (_, p) in enumerate(self.named)}
        self._sample_idx: dict[int, torch.Tensor] = {}
        self._buffer: list[torch.Tensor] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the current step's captures."""
        self.grad_norms: list[torch.Tensor | None] = [None] * len(self.named)
        self.failed: set[int] = set()  # gradient norms whose measurement failed this step: left out
        self.before: list[torch.Tensor] | None = None
        self.before_norms: list[torch.Tensor] | None = None
        self.sgd: SgdPlan | None = None  # the step's update is read from SGD's momentum buffers (no copy)

    def release(self) -> None:
        """Drop every reference to the model's parameters."""
        self.named = []
        self.index = {}
        self._sample_idx = {}
        self._buffer = None
        self.reset()

    # -- gradients -------------------------------------------------------------------
    def capture_grads(self, params: Iterable[torch.Tensor] | None = None) -> None:
        """Record gradient norms of ``params`` (default: all trainable parameters) not yet captured.

        Call it where gradients are final and unscaled: Lightning's ``on_before_optimizer_step``
        (before clipping), or the optimizer's step pre-hook in plain loops.
        """
        ids = range(len(self.named)) if params is None else [self.index[id(p)] for p in params if id(p) in self.index]
        todo = [i for i in ids if self.grad_norms[i] is None and i not in self.failed]
        self.failed.update(todo)  # until measured: a failure below must not later read as "no gradient" (0)
        with_grad = [i for i in todo if self.named[i][1].grad is not None]
        if with_grad:
            vals = norms([local(self.named[i][1].grad.detach()) for i in with_grad])  # type: ignore[union-attr]
            for j, i in enumerate(with_grad):
                self.grad_norms[i] = vals[j]
        for i in todo:
            if self.grad_norms[i] is None:  # no gradient reached this parameter
                self.grad_norms[i] = torch.zeros((), device=local(self.named[i][1]).device)
        self.failed.difference_update(todo)

    # -- update ratio ----------------------------------------------------------------
    def stepped(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer`` has stepped: where this step's update is read from it, which parameters it moved."""
        if self.sgd is not None and self.sgd.optimizer is optimizer:
            self.sgd.stepped()

    def snapshot(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Copy (or sample) the weights before the optimizer changes them (once per step).

        In exact mode the copy goes into a buffer that is reused while logging steps follow
        each other (no allocation and page faults per step) and freed by :meth:`release_buffer`.
        ``optimizer`` (the one about to step, when it alone trains every parameter): where it is an
        SGD with momentum, only the weights' norms are taken; :meth:`pack` reads the update from it.
        """
        if self.before is not None or self.sgd is not None or self.mode == "off":
            return
        with torch.no_grad():
            plan = sgd_update_plan(optimizer, self.named) if self.mode == "exact" and optimizer is not None else None
            if plan is not None:
                self.sgd = plan
            elif self.mode == "exact":
                live = [local(p.detach()) for _, p in self.named]
                buf = self._buffer
                if (
                    buf is None
                    or len(buf) != len(live)
                    or any(b.shape != p.shape or b.dtype != p.dtype for b, p in zip(buf, live, strict=True))
                ):
                    buf = [torch.empty_like(p) for p in live]
                torch._foreach_copy_(buf, live)
                self.before_norms = norm_list(buf)  # cache-hot after the copy
                self._buffer = buf
                self.before = buf
            else:
                self.before = [local(p.detach()).reshape(-1)[self._indices(p)].clone() for _, p in self.named]

    def release_buffer(self) -> None:
        """Free the exact-mode weight copy (called when the next step is not a logging step)."""
        self._buffer = None

    def _indices(self, p: torch.Tensor) -> torch.Tensor:
        idx = self._sample_idx.get(id(p))
        if idx is None:
            p = local(p)  # FSDP: this rank's shard
            n = p.numel()
            gen = torch.Generator().manual_seed(n)
            idx = torch.randperm(n, generator=gen)[: self.samples].to(p.device) if n > self.samples else None
            idx = torch.arange(n, device=p.device) if idx is None else idx
            self._sample_idx[id(p)] = idx
        return idx

    def pack(self, weights: bool = True) -> tuple[list[tuple[str, str]], list[torch.Tensor]]:
        """Keys and 0-d on-device values: ``grad_norm``, and raw ``_wb``/``_delta`` (or ``weight_norm``).

        ``weights=False`` (a light logging step, no snapshot taken): the gradient norms only.

        ``update_ratio``, ``weight_norm`` and ``grad_norm_total`` are finished on the host
        (:mod:`nndiag.stats.finalize`).
        """
        if not self.named:
            return [], []
        with contextlib.suppress(Exception):  # a failure here was reported where the gradients were final
            self.capture_grads()  # parameters outside every optimizer, or no optimizer hook
        names = [n for n, _ in self.named]
        measured = [i for i, g in enumerate(self.grad_norms) if g is not None]
        keys: list[tuple[str, str]] = [(names[i], Q.GRAD_NORM) for i in measured]
        values: list[torch.Tensor] = [self.grad_norms[i] for i in measured]  # type: ignore[misc]
        with torch.no_grad():
            sgd = _sgd_distances(self.sgd) if self.sgd is not None and self.sgd.done else None
            if self.sgd is not None and sgd is not None:
                keys += [(n, "_wb") for n in names]
                values += self.sgd.before_norms
                keys += [(n, "_delta") for n in names]
                values += sgd
            elif self.before is None:
                if weights:
                    keys += [(n, Q.WEIGHT_NORM) for n in names]
                    values += norm_list([local(p.detach()) for _, p in self.named])
            else:
                live = [local(p.detach()) for _, p in self.named]
                # sample indices are keyed by the parameter itself (a detached view is a new object each call)
                after = (
                    live
                    if self.mode == "exact"
                    else [t.reshape(-1)[self._indices(p)] for t, (_, p) in zip(live, self.named, strict=True)]
                )
                before = self.before if self.mode == "exact" else live
                keys += [(n, "_wb") for n in names]
                values += self.before_norms or norm_list(before)
                if self.mode == "sampled":  # the ratio is estimated on the sampled elements
                    keys += [(n, "_wbs") for n in names]
                    values += norm_list(self.before)
                keys += [(n, "_delta") for n in names]  # keys and values in the same order
                values += _distances(after, self.before, in_place=self.mode == "exact")
        self.reset()
        return keys, values


@dataclass
class SgdPlan:
    """How one SGD step moves each parameter: ``lrs[i] * ||buf_i||``, or not at all (``lrs[i]`` None)."""

    optimizer: torch.optim.Optimizer
    params: list[torch.Tensor]
    lrs: list[float | None]
    before_norms: list[torch.Tensor]  # ||w|| before the step
    done: bool = False  # stepped() was called: the step ran, the plan may be read

    def stepped(self) -> None:
        """The step ran: parameters without a gradient now were skipped by SGD (not moved)."""
        self.lrs = [None if p.grad is None else lr for p, lr in zip(self.params, self.lrs, strict=True)]
        self.done = True


def sgd_update_plan(optimizer: torch.optim.Optimizer, named: list[tuple[str, nn.Parameter]]) -> SgdPlan | None:
    """The plan for reading this step's update from SGD's momentum buffers, or None where it would not be exact.

    ``torch.optim.SGD`` (the class itself, not a subclass) with ``momentum > 0``, ``nesterov=False``,
    not ``fused``, float learning rates, and every parameter in ``named`` among its own (plain
    tensors, not sharded): its step is ``p -= lr * buf`` (``p += lr * buf`` with ``maximize``), with
    weight decay and dampening folded into ``buf``. A parameter without a gradient is not moved: call
    :meth:`SgdPlan.stepped` after the step (a closure computes the gradients inside it), which sets
    its ``lrs`` entry to None. Not covered, and so measured by the copy: changes made to the weights after the
    step and before the step ends (max-norm constraints, EMA swaps).

    Example:
        >>> import torch, torch.nn as nn
        >>> m = nn.Linear(2, 1)
        >>> m.weight.grad = torch.ones_like(m.weight)
        >>> plan = sgd_update_plan(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), list(m.named_parameters()))
        >>> plan.stepped(); plan.lrs
        [0.1, None]
        >>> sgd_update_plan(torch.optim.Adam(m.parameters()), list(m.named_parameters())) is None
        True
    """
    if type(optimizer) is not torch.optim.SGD:
        return None
    lr_of: dict[int, float] = {}
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if not (group.get("momentum", 0) > 0) or group.get("nesterov") or group.get("fused"):
            return None
        if not isinstance(lr, (float, int)) or isinstance(lr, bool):
            return None  # a tensor learning rate (capturable): reading it could synchronise
        for p in group["params"]:
            lr_of[id(p)] = float(lr)
    params: list[torch.Tensor] = []
    lrs: list[float | None] = []
    for _, p in named:
        lr = lr_of.get(id(p))
        if lr is None or type(p.detach()) is not torch.Tensor or p.dtype not in (torch.float32, torch.float64):
            return None  # another optimizer's, sharded (DTensor), or half precision (rounding may swallow updates)
        params.append(p)
        lrs.append(abs(lr))
    return SgdPlan(optimizer, params, lrs, norm_list([p.detach() for p in params]))


def _sgd_distances(plan: SgdPlan) -> list[torch.Tensor] | None:
    """``lr * ||buf||`` per parameter after the step (0 where it had no gradient); None if a buffer is missing."""
    state = plan.optimizer.state
    bufs: list[torch.Tensor] = []
    for p, lr in zip(plan.params, plan.lrs, strict=True):
        if lr is None:
            continue
        buf = state.get(p, {}).get("momentum_buffer")
        if not isinstance(buf, torch.Tensor) or buf.shape != p.shape:
            return None
        bufs.append(buf)
    norms_ = iter(norm_list(bufs))
    out: list[torch.Tensor] = []
    for p, lr in zip(plan.params, plan.lrs, strict=True):
        out.append(torch.zeros((), device=p.device) if lr is None else next(norms_).float() * lr)
    return out


def _distances(after: list[torch.Tensor], before: list[torch.Tensor], in_place: bool) -> list[torch.Tensor]:
    """``||a - b||`` of each pair in at least fp32.

    ``in_place``: ``before`` is the collector's own buffer, overwritten with the differences (one
    fused subtraction and one fused norm; a fresh difference tensor per parameter would cost a page
    fault per 4 KiB, more than the arithmetic). Reduced-precision pairs are subtracted in fp32.
    """
    exact = [i for i, (a, b) in enumerate(zip(after, before, strict=True)) if a.dtype == b.dtype and _wide(a)]
    out: list[torch.Tensor] = [torch.zeros(())] * len(after)
    if exact and in_place:
        diffs = [before[i] for i in exact]
        torch._foreach_sub_(diffs, [after[i] for i in exact])
        for i, v in zip(exact, norm_list(diffs), strict=True):
            out[i] = v.float()
    elif exact:
        for i in exact:
            out[i] = torch.dist(after[i], before[i]).float()
    done = set(exact)
    for i, (a, b) in enumerate(zip(after, before, strict=True)):
        if i not in done:
            out[i] = torch.linalg.vector_norm(a.float() - b.float())
    return out


def _wide(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float32, torch.float64)
