"""``nndiag.batch_size_probe(model, loader, loss_fn)``: the gradient noise scale on one device, opt-in.

Training on one device without gradient accumulation measures one batch size only, so the run
cannot estimate the noise scale (docs/noise_scale.md). The probe takes a few batches of the
loader, splits each (of ``B`` samples) into ``chunks`` disjoint parts of ``b = B / chunks``, and
computes each part's gradient (``torch.autograd.grad``: ``.grad`` is untouched): ``|G_b|²`` is the
mean of the parts' squared norms, ``|G_B|²`` the squared norm of their mean. The unbiased
estimators of McCandlish et al. (2018) give ``tr Σ`` and ``|G|²`` per batch; ``B_noise`` is the
ratio of their means over the batches, with a delta-method standard error.

Cost: one forward and backward pass per batch (in ``chunks`` smaller passes, so somewhat slower
than a training step) and one extra copy of the gradients; no optimizer step. The model is left as
it was: weights untouched, buffers (BatchNorm statistics) restored, the RNG state restored.

Example:
    >>> import torch, torch.nn as nn
    >>> import nndiag
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(1024, 8); y = x.sum(1, keepdim=True) + torch.randn(1024, 1)
    >>> loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    >>> probe = nndiag.batch_size_probe(nn.Linear(8, 1), loader, nn.MSELoss())
    >>> probe.batch_size, probe.small_batch, probe.batches, probe.noise_scale > 0
    (64, 16, 8, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch
from torch import nn

from nndiag import quantities as Q
from nndiag.collect.noise_scale import estimates
from nndiag.diagnosis import Diagnosis
from nndiag.preflight.batch import batch_len, model_device, split_batch, take_rows, to_device
from nndiag.preflight.loss import LossFn
from nndiag.rules.batch_size import BatchSizeThresholds, batch_size_advice, noise_scale_estimate
from nndiag.rules.view import RunView


@dataclass
class NoiseScaleProbe:
    """What :func:`batch_size_probe` measured.

    Attributes:
        noise_scale: ``B_noise = mean(tr Σ) / mean(|G|²)`` in samples (NaN when ``|G|²`` is not positive).
        spread: its standard error (delta method over the batches).
        batch_size: the loader's batch ``B``; ``small_batch``: the part ``b = B / chunks``.
        batches: batches measured; ``trace`` / ``grad_sq``: the mean estimates of ``tr Σ`` and ``|G|²``.
        seconds: wall time of the probe (``seconds / batches`` per batch).
        diagnoses: the ``batch_size_advice`` the run's rule gives for these estimates (empty: no advice).
    """

    noise_scale: float
    spread: float
    batch_size: int
    small_batch: int
    batches: int
    trace: float
    grad_sq: float
    seconds: float
    diagnoses: list[Diagnosis]

    def to_dict(self) -> dict[str, Any]:
        """The numbers, the message and the advice (its diagnoses as dicts)."""
        out = {k: v for k, v in vars(self).items() if k != "diagnoses"}
        return {**out, "message": self.message, "diagnoses": [d.to_dict() for d in self.diagnoses]}

    @property
    def message(self) -> str:
        """One line: the estimate, and the advice if any."""
        where = f"batch {self.batch_size}, {self.batches} batches, {self.seconds:.2f} s"
        if not math.isfinite(self.noise_scale):
            return (
                f"gradient noise scale not measurable ({where}): the estimate of |G|² or tr(Σ) is not positive "
                "(the noise swamps the mean gradient); measure more batches"
            )
        head = f"gradient noise scale ~{self.noise_scale:,.0f} samples (±{self.spread:,.0f}; {where})"
        return head + (f": {self.diagnoses[0].message}" if self.diagnoses else "")


def batch_size_probe(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFn,
    *,
    batches: int = 8,
    chunks: int = 4,
    thresholds: BatchSizeThresholds | None = None,
) -> NoiseScaleProbe:
    """Estimate the gradient noise scale at the loader's batch size (see the module docstring).

    Args:
        model: the model, called as ``model(x)``; left unchanged.
        loader: batches in any form :func:`nndiag.preflight` accepts (a ``DataLoader``, a list of ``(x, y)``).
        loss_fn: ``loss_fn(model(x), y)``, a mean over the samples.
        batches: how many batches to measure (more: a smaller spread; each costs about one training step).
        chunks: parts per batch (the small batch is ``B // chunks``; ``>= 2``).
        thresholds: the advice's thresholds (default: the rule's; ``min_estimates`` is capped at ``batches``).

    Raises:
        ValueError: for ``chunks < 2``, ``batches < 2``, or a batch smaller than ``chunks`` samples.
    """
    if chunks < 2 or batches < 2:
        raise ValueError(
            f"batch_size_probe needs chunks >= 2 and batches >= 2, got chunks={chunks}, batches={batches}."
        )
    device = model_device(model)
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    names = {n for n, _ in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if k not in names}
    rows: list[tuple[int, str, str, float]] = []  # a history of per-batch estimates, for the run's rule
    size = small = 0
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            for i, batch in enumerate(loader):
                if i >= batches:
                    break
                x, y = (to_device(part, device) for part in split_batch(batch))
                size = batch_len(x) or 0
                small = size // chunks
                if small < 1:
                    raise ValueError(f"batch_size_probe: a batch of {size} samples cannot be split in {chunks} parts.")
                g_small, g_big = _squared_norms(model, params, loss_fn, x, y, small, chunks)
                g2, trace = estimates(g_small, g_big, float(small), float(small * chunks))
                rows += [(i, "", Q.GNS_TRACE, trace), (i, "", Q.GNS_GRAD_SQ, g2), (i, "", Q.BATCH_SIZE, float(size))]
    finally:
        with torch.no_grad():
            model.load_state_dict(buffers, strict=False)
    seconds = time.perf_counter() - start
    view = RunView(pd.DataFrame(rows, columns=["step", "layer", "stat", "value"]))
    n = len(rows) // 3
    base = thresholds or BatchSizeThresholds()
    t = replace(
        base,
        batch_advice_window=max(base.batch_advice_window, n),
        batch_advice_min_estimates=min(base.batch_advice_min_estimates, n),
    )
    est = noise_scale_estimate(view, t.batch_advice_window)
    trace_mean = float(view.series(Q.GNS_TRACE).mean()) if n else float("nan")
    g2_mean = float(view.series(Q.GNS_GRAD_SQ).mean()) if n else float("nan")
    b_noise, se = (est[0], est[1]) if est is not None else (float("nan"), float("nan"))
    advice = batch_size_advice(view, t) if est is not None else []
    return NoiseScaleProbe(b_noise, se, size, small, n, trace_mean, g2_mean, seconds, advice)


def _squared_norms(
    model: nn.Module, params: list[torch.Tensor], loss_fn: LossFn, x: Any, y: Any, small: int, chunks: int
) -> tuple[float, float]:
    """Mean squared norm of the parts' gradients, and squared norm of their mean."""
    total: list[torch.Tensor] | None = None
    sq = 0.0
    for c in range(chunks):
        part = slice(c * small, (c + 1) * small)
        loss = loss_fn(model(take_rows(x, part)), take_rows(y, part))
        raw = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(raw, params, strict=True)]
        sq += float(torch.stack(torch._foreach_norm(grads)).double().square().sum())
        if total is None:
            total = grads
        else:
            torch._foreach_add_(total, grads)
    assert total is not None
    big = float(torch.stack(torch._foreach_norm(total)).double().square().sum()) / chunks**2
    return sq / chunks, big
