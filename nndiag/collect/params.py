"""Per-parameter gradient norms, weight norms and update/weight ratios, on the device.

The update ratio ``||w_after - w_before|| / ||w_before||`` is measured on the real
parameters around the optimizer step, so it is right for SGD, Adam or any optimizer.
In ``"exact"`` mode one copy of the trainable parameters is held from the optimizer's
pre-step to the end of the logging step (kept across consecutive logging steps, freed
before a non-logging step); the distance is computed fused, so no second copy is made.

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
    def snapshot(self) -> None:
        """Copy (or sample) the weights before the optimizer changes them (once per step).

        In exact mode the copy goes into a buffer that is reused while logging steps follow
        each other (no allocation and page faults per step) and freed by :meth:`release_buffer`.
        """
        if self.before is not None or self.mode == "off":
            return
        with torch.no_grad():
            if self.mode == "exact":
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
            if self.before is None:
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
