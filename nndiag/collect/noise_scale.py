"""The gradient noise scale from gradients measured at two batch sizes (McCandlish et al. 2018).

``B_noise = tr(Σ) / |G|²``: batches well below it spend most of each step on noise, batches
well above it spend compute for little gain. With ``|G_s|²`` and ``|G_b|²`` the squared norms of
mean gradients over ``B_s`` and ``B_b`` samples (``E|G_B|² = |G|² + tr(Σ)/B``), the paper's
unbiased estimators (appendix A.1) are::

    |G|²  ≈ (B_b |G_b|² - B_s |G_s|²) / (B_b - B_s)
    tr(Σ) ≈ (|G_s|² - |G_b|²) / (1/B_s - 1/B_b)
    B_simple = EMA(tr Σ) / EMA(|G|²)

Where the two norms come from (no extra forward or backward pass):

* a tensor hook on every trainable parameter (``param.register_hook``, armed on logging steps
  only) sees each backward pass's own gradient, *before* it is accumulated into ``.grad`` and
  before DDP's all-reduce (DDP hooks the gradient accumulator, which runs after tensor hooks);
* the gradient at the optimizer step (``.grad``, the norms the recorder measures anyway) is the
  big batch: the accumulation of ``k`` micro-batches, all-reduced over ``W`` ranks.

So ``B_s`` = the micro-batch of one rank, ``|G_s|²`` = the mean over micro-batches (and, through the
packed exchange, over ranks) of their squared norms, ``B_b = W k B_s``. Lightning and the HF
Trainer divide the loss by ``k``, so the hook sees ``g_micro / k``: it is scaled back by ``k``
(a loop that does not divide gets ``|G|²`` and ``tr Σ`` ``k²`` too large, ``B_noise`` unchanged).
With one process and no accumulation there is one batch size only: the hooks are not armed after
the first logging step shows it (use :func:`nndiag.batch_size_probe`).

Each rank computes both estimates from its own ``|G_s|²`` and the (shared) ``|G_b|²``; they are
linear in ``|G_s|²``, so the exchange's mean over ranks is the estimate from the rank mean, and the
EMAs (kept per rank) average the same way. The ratio is taken on the host (``_gns_s / _gns_g``).

Example:
    >>> import torch, torch.nn as nn
    >>> model = nn.Linear(3, 1, bias=False)
    >>> col = NoiseScaleCollector(list(model.named_parameters()))
    >>> col.arm()
    >>> x = torch.eye(3)
    >>> for i in range(2):  # two micro-batches of one sample each, loss divided by k = 2
    ...     (model(x[i : i + 1]).sum() / 2).backward()
    >>> keys, values, extras = col.pack([model.weight.grad.norm()], batch_size=1, world_size=1)
    >>> raw = dict(zip([s for _, s in keys], [round(float(v), 4) for v in values]))
    >>> raw["gns_small_sq"], raw["gns_big_sq"], extras[0][1:]
    (1.0, 0.5, ('batch_size', 2.0))
    >>> col.reset()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nndiag import quantities as Q
from nndiag.collect.ranks import is_dtensor

EMA_SPAN = 20  # logging steps; the EMA weight of a new estimate is 2 / (span + 1)


class NoiseScaleCollector:
    """Per-backward squared gradient norms (tensor hooks, logging steps only) -> noise-scale inputs."""

    def __init__(self, named: Sequence[tuple[str, nn.Parameter]], span: int = EMA_SPAN) -> None:
        self.params = [p for _, p in named]
        self.alpha = 2.0 / (span + 1)
        # sharded parameters (FSDP2 DTensors, FSDP1 flat parameters): the step's norms are of shards, not measured
        self.broken = any(is_dtensor(p) or type(p).__name__ == "FlatParameter" for p in self.params)
        self.useful: bool | None = None  # None until the first pack shows whether two batch sizes exist
        self._handles: list[Any] = []
        self._ema: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reset()

    def arm(self) -> None:
        """Hook every trainable parameter's gradient until :meth:`reset` (idempotent)."""
        if self._handles or self.broken or self.useful is False:
            return
        for i, p in enumerate(self.params):
            self._handles.append(p.register_hook(_Hook(self, i)))

    def reset(self) -> None:
        """Remove the hooks and forget this step's gradients."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._sq: list[torch.Tensor | None] = [None] * len(self.params)
        self._count = [0] * len(self.params)

    def release(self) -> None:
        """Drop every reference to the model."""
        self.reset()
        self.params = []
        self._sq, self._count = [], []

    def observe(self, i: int, grad: torch.Tensor) -> None:
        """One backward pass's gradient of parameter ``i`` (called by the hook; never raises)."""
        try:
            if grad.is_sparse or is_dtensor(grad):
                self.broken = True
                return
            sq = torch.linalg.vector_norm(grad.detach(), dtype=torch.float32).square()
            old = self._sq[i]
            self._sq[i] = sq if old is None else old + sq
            self._count[i] += 1
        except Exception:  # a monitoring hook inside autograd must never break training
            self.broken = True

    def pack(
        self, grad_norms: Sequence[torch.Tensor | None], batch_size: int | None, world_size: int | None = None
    ) -> tuple[list[tuple[str, str]], list[torch.Tensor], list[tuple[str, str, float]]]:
        """Keys, 0-d values and host extras of one logging step (then :meth:`reset`).

        ``grad_norms[i]``: the norm of parameter ``i``'s gradient at the optimizer step (``None``: not
        measured); ``batch_size``: the samples of one forward pass on one rank.
        """
        try:
            return self._pack(grad_norms, batch_size, _world() if world_size is None else world_size)
        finally:
            self.reset()

    def _pack(
        self, grad_norms: Sequence[torch.Tensor | None], batch_size: int | None, world: int
    ) -> tuple[list[tuple[str, str]], list[torch.Tensor], list[tuple[str, str, float]]]:
        k = max(self._count, default=0)
        if not batch_size or batch_size <= 0:
            return [], [], []
        if k == 0:  # not armed: no estimate, the batch size alone (assumes no accumulation)
            return [], [], [(Q.RUN_LAYER, Q.BATCH_SIZE, float(batch_size * world))]
        b_small, b_big = float(batch_size), float(batch_size * world * k)
        extras = [(Q.RUN_LAYER, Q.BATCH_SIZE, b_big), (Q.RUN_LAYER, Q.GNS_SMALL_BATCH, b_small)]
        self.useful = b_big > b_small
        idx = [i for i, s in enumerate(self._sq) if s is not None and i < len(grad_norms) and grad_norms[i] is not None]
        if self.broken or not self.useful or not idx:
            return [], [], extras[:1]
        device = grad_norms[idx[0]].device  # type: ignore[union-attr]
        small = float(k) * torch.stack([self._sq[i].to(device) for i in idx]).double().sum()  # type: ignore[union-attr]
        big = torch.stack([grad_norms[i].to(device).double() for i in idx]).square().sum()  # type: ignore[union-attr]
        g2, trace = estimates(small, big, b_small, b_big)
        if self._ema is None:
            self._ema = (trace.clone(), g2.clone())
        else:
            a = self.alpha
            self._ema = (self._ema[0] * (1 - a) + trace * a, self._ema[1] * (1 - a) + g2 * a)
        keys = [
            (Q.RUN_LAYER, s) for s in (Q.GNS_SMALL_SQ, Q.GNS_BIG_SQ, Q.GNS_GRAD_SQ, Q.GNS_TRACE, "_gns_s", "_gns_g")
        ]
        return keys, [small, big, g2, trace, *self._ema], extras


class _Hook:
    """The tensor hook of one parameter (a small object, not a closure over the loop variable)."""

    __slots__ = ("col", "i")

    def __init__(self, col: NoiseScaleCollector, i: int) -> None:
        self.col, self.i = col, i

    def __call__(self, grad: torch.Tensor) -> None:
        self.col.observe(self.i, grad)


def estimates(small: Any, big: Any, b_small: float, b_big: float) -> tuple[Any, Any]:
    """``(|G|², tr Σ)`` from squared mean-gradient norms at ``b_small`` < ``b_big`` samples (paper, A.1).

    Example:
        >>> g2, trace = estimates(small=1.0 + 10.0 / 4, big=1.0 + 10.0 / 16, b_small=4, b_big=16)
        >>> round(g2, 6), round(trace, 6)
        (1.0, 10.0)
    """
    g2 = (b_big * big - b_small * small) / (b_big - b_small)
    trace = (small - big) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


def _world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
