"""One logging step's statistics, packed into a single tensor for one host transfer.

On an accelerator the copy is issued non-blocking into pinned memory and an event
is recorded; the background writer waits on that event, so the training thread
never synchronises with the device. Decoding (and the arithmetic that turns raw
sufficient statistics into recorded statistics) happens on the background thread.

Example:
    >>> import torch
    >>> from nndiag.collect.packet import Packet
    >>> p = Packet.build(step=3, losses=torch.tensor([2.5, 2.25]), loss_steps=[2, 3],
    ...                  keys=[("fc.weight", "grad_norm")], scalars=[torch.tensor(0.5)])
    >>> rows = p.decode()
    >>> list(zip(rows.step.tolist(), rows.stats, rows.value.tolist()))
    [(2, 'loss', 2.5), (3, 'loss', 2.25), (3, 'grad_norm', 0.5), (3, 'grad_norm_total', 0.5)]

"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nndiag import quantities as Q
from nndiag.rows import Rows
from nndiag.stats.finalize import RAW_PREFIX, finalize_layer, total_norm

_HALF = (torch.float16, torch.bfloat16)
GLOBAL_LAYER = Q.RUN_LAYER  # layer name of run-wide statistics (loss, grad_norm_total)


@dataclass
class Packet:
    """Keys, the packed values (host copy in flight) and host-side extras of one logging step.

    ``values`` holds, in order: one loss per entry of ``loss_steps``, one value per entry
    of ``keys`` (at ``step``), then the histograms (``2 * bins + 1`` numbers each) named in
    ``hist_keys``. ``extras`` are values already known on the host (counts, learning rates).
    """

    step: int
    keys: list[tuple[str, str]]
    values: torch.Tensor
    loss_steps: list[int]
    extras: list[tuple[str, str, float]] = field(default_factory=list)
    hist_keys: list[tuple[str, str]] = field(default_factory=list)
    bins: int = 0
    event: Any = None
    failures: list[Exception] = field(default_factory=list)  # why layers' statistics could not be finalised

    @classmethod
    def build(
        cls,
        step: int,
        losses: torch.Tensor | None = None,
        loss_steps: list[int] | None = None,
        keys: list[tuple[str, str]] | None = None,
        scalars: list[torch.Tensor] | None = None,
        extras: list[tuple[str, str, float]] | None = None,
        hist_keys: list[tuple[str, str]] | None = None,
        hists: list[torch.Tensor] | None = None,
        bins: int = 0,
    ) -> Packet:
        """Concatenate everything on one device and start the single copy to the host."""
        parts: list[torch.Tensor] = []
        if losses is not None:
            parts.append(losses.reshape(-1).float())
        if scalars:
            parts.append(_stacked(scalars))
        if hists:
            parts += [h.reshape(-1).float() for h in hists]
        packet = cls(step, keys or [], torch.zeros(0), loss_steps or [], extras or [], hist_keys or [], bins)
        if not parts:
            return packet
        device = parts[0].device
        flat = parts[0] if len(parts) == 1 else torch.cat([p.to(device, non_blocking=True) for p in parts])
        if device.type == "cuda":
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            packet.event = torch.cuda.Event()
            packet.event.record()
        elif device.type == "cpu":
            host = flat
        else:  # other accelerators: a plain copy (may synchronise)
            host = flat.to("cpu")
        packet.values = host
        return packet

    def wait(self) -> None:
        """Block (the calling thread only) until the host copy has landed."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None

    def decode(self, finalize: bool = True) -> Rows:
        """Recorded statistics of this packet: raw statistics finalised (unless ``finalize=False``), totals added.

        A layer whose raw statistics cannot be finalised is left out and named in :attr:`failures`.
        """
        self.wait()
        vals = self.values.numpy().astype(np.float64, copy=False).tolist()
        n_loss = len(self.loss_steps)
        steps: list[int] = list(self.loss_steps)
        layers: list[str] = [GLOBAL_LAYER] * n_loss
        stats: list[str] = [Q.LOSS] * n_loss
        values: list[float] = vals[:n_loss]
        raw: dict[str, dict[str, float]] = {}
        grad_norms: list[float] = []
        entries = zip(self.keys, vals[n_loss : n_loss + len(self.keys)], strict=True)
        merged = [(layer, stat, v) for (layer, stat), v in entries] + self.extras
        for layer, stat, v in merged:
            if stat.startswith(RAW_PREFIX):
                raw.setdefault(layer, {})[stat] = v
                continue
            if stat == Q.GRAD_NORM:
                grad_norms.append(v)
            layers.append(layer)
            stats.append(stat)
            values.append(v)
        for layer, r in raw.items() if finalize else ():
            try:
                done = finalize_layer(r)
            except Exception as exc:  # one layer's bad numbers must not cost the packet (and its losses)
                exc.add_note(f"nndiag: while finalising the statistics of layer {layer!r} at step {self.step}")
                self.failures.append(exc)
                continue
            for stat, v in done.items():
                layers.append(layer)
                stats.append(stat)
                values.append(v)
        if grad_norms:
            layers.append(GLOBAL_LAYER)
            stats.append(Q.GRAD_NORM_TOTAL)
            values.append(total_norm(grad_norms))
        steps += [self.step] * (len(values) - n_loss)
        return Rows(np.asarray(steps, dtype=np.int64), layers, stats, np.asarray(values, dtype=np.float64))

    def histograms(self) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
        """``(layer, stat, edges, counts)`` of each packed histogram."""
        self.wait()
        out = []
        offset = len(self.loss_steps) + len(self.keys)
        width = 2 * self.bins + 1
        vals = self.values.numpy()
        for layer, stat in self.hist_keys:
            chunk = vals[offset : offset + width].astype(np.float64)
            out.append((layer, stat, chunk[: self.bins + 1], chunk[self.bins + 1 :]))
            offset += width
        return out


def _stacked(scalars: list[torch.Tensor]) -> torch.Tensor:
    """One-element tensors -> one 1-D fp32 tensor on the first one's device.

    The common case (every value 0-d on one device) is a single ``torch.stack``, tried first: it
    raises on mixed devices or shapes, and it promotes mixed dtypes itself, which is exact unless
    the result is half precision (only half-precision floats among integer counts: the counts would
    be rounded to fp16/bf16); those cases convert each value first, a few microseconds each.

    Example:
        >>> import torch
        >>> _stacked([torch.tensor(3), torch.tensor(0.5)]).tolist()
        [3.0, 0.5]
        >>> _stacked([torch.tensor(4097), torch.tensor(0.5, dtype=torch.bfloat16)]).tolist()
        [4097.0, 0.5]

    """
    try:
        out = torch.stack(scalars)
    except RuntimeError:  # several devices, or 0-d values mixed with one-element 1-D ones
        out = None
    if out is None or out.dtype in _HALF or out.numel() != len(scalars):
        device = scalars[0].device
        return torch.stack([s.to(device=device, dtype=torch.float32).reshape(()) for s in scalars])
    return out.reshape(-1).float()
