"""Combining every rank's statistics into one logging step (DDP, FSDP, multi-node).

Lightning's strategies (or ``torchrun``) start the processes; nndiag only notices that
``torch.distributed`` is initialised. Every rank then records its own batch, and at each
logging step the ranks exchange **one packed all-reduce** (a sum over a ``float64`` vector,
on the device the statistics live on) that the encoding below turns into the right
combination for each statistic:

================================  ==============  ============================================
statistic                         sent as         combined (on rank 0)
================================  ==============  ============================================
element count, sum, non-finite    value           sum (so means/stds are over the global batch)
and saturated counts
L2 norm of the outputs            squared         ``sqrt`` of the sum
per-unit "ever active"            ``max > 0``     a unit is dead only if dead on every rank
"has negative values"             ``min < 0``     any rank
loss of each step                 value, count    mean over the ranks that had a loss
grad / weight / update norms of   value           mean (DDP: gradients are already averaged
replicated parameters (DDP)                       and the weights identical on every rank)
the same of sharded parameters    squared         ``sqrt`` of the sum (FSDP: each rank holds a
(FSDP ``DTensor``, FSDP1)                         shard; the global norm is ``sqrt(sum_r n_r^2)``)
================================  ==============  ============================================

Three numbers lead the vector: how many ranks had statistics, how many local statistics
had no slot in the agreed layout, and rank 0's vote to halt (``halt_on``). The layout (which
statistic sits where) is agreed once, with ``all_gather_object``, at the first exchange,
and again only after some rank reported statistics without a slot (a module that runs on
one rank only, say); between those, a statistic missing on a rank contributes zeros.

Deadlock safety: the collective runs on every rank at every exchange whatever happened
locally. A rank whose own statistics failed sends zeros (it is not counted); a failing
collective switches combining off on that rank with one warning, and rank 0 then records
its own batch only. Nothing here runs outside the optimizer steps that every rank counts
identically (logging steps of a deterministic schedule), and nothing runs at close.

Example (a single process: nothing to combine, the payload passes through):
    >>> from nndiag.collect.distributed import combiner_for
    >>> c = combiner_for(None)
    >>> c.distributed, c.writer
    (False, True)

"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch

from nndiag.collect.payload import (
    ACT_SUMS,
    ANY,
    FULL_STEP_SLOTS,
    HEADER,
    MEAN,
    PARAM_NORMS,
    SQUARES,
    SUM,
    Combined,
    Slot,
    StepPayload,
)
from nndiag.collect.ranks import agree, collective_device, is_dtensor, local, sharded_parameters, writes_here
from nndiag.guard import NndiagInternalWarning


class LocalCombiner:
    """A single process: statistics pass through unchanged."""

    distributed = False
    writer = True
    rank = 0
    world_size = 1
    agreed_halt = False
    broken = False

    def vote_halt(self, halt: bool) -> None:
        """Nothing to agree on in a single process (see :meth:`RankCombiner.vote_halt`)."""


def combiner_for(model: torch.nn.Module | None, enabled: bool = True) -> LocalCombiner | RankCombiner:
    """A :class:`RankCombiner` when ``torch.distributed`` runs more than one process, else a :class:`LocalCombiner`.

    With ``enabled=False`` in a distributed run, rank 0 records its own batch only and the other
    ranks record nothing (no collective at all).
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return LocalCombiner()
    if not enabled:
        local = LocalCombiner()
        local.writer = writes_here()
        local.rank = dist.get_rank()
        return local
    return RankCombiner(sharded_parameters(model) if model is not None else set())


class RankCombiner:
    """Exchanges one packed all-reduce per logging step; rank 0 gets the global batch's statistics."""

    distributed = True

    def __init__(self, sharded: Iterable[str] = (), group: Any = None) -> None:
        dist = torch.distributed
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.writer = self.rank == 0
        self.sharded = set(sharded)
        self.layout: list[Slot] | None = None
        self.renegotiate = False
        self.broken = False
        self.agreed_halt = False
        self._halt_vote = False  # rank 0: does a halt_on diagnosis hold? (sent with the next exchange)
        self.loss_base: int | None = None  # first step whose loss has not been exchanged yet
        self.exchanges = 0
        self.negotiations = 0
        self.unplaced_seen = 0
        self._pending_header: tuple[torch.Tensor, Any] | None = None
        self._warned: set[str] = set()

    # -- the exchange ----------------------------------------------------------------
    def vote_halt(self, halt: bool) -> None:
        """Rank 0's vote to stop training (``halt_on``), sent in the header of the next exchange.

        Every rank sees :attr:`agreed_halt` turn True at the same exchange; other ranks' votes are ignored.
        """
        self._halt_vote = bool(halt)

    def steps_pending(self, step: int) -> int:
        """Steps whose losses the next exchange (at ``step``) carries: those since the last exchange."""
        return 1 if self.loss_base is None else step - self.loss_base + 1

    def exchange(
        self,
        step: int,
        payload: StepPayload | None,
        losses: torch.Tensor | None,
        loss_steps: list[int],
    ) -> Combined | None:
        """Combine this step's statistics (and the losses since the last exchange) over all ranks.

        Runs the collective on every rank whatever ``payload`` is (``None``: this rank's statistics
        failed). Returns what rank 0 writes; ``None`` on the other ranks. Never raises.
        """
        base = step + 1 - self.steps_pending(step)
        self.loss_base = step + 1
        if self.broken:
            return Combined(payload, losses, loss_steps) if self.writer else None
        device = _device_of(payload, losses)
        try:
            self._absorb_header()
            entries = self._entries(payload) if payload is not None else None
            spec = None if entries is None else [Slot(*key, op, _length(v)) for key, (op, v) in entries.items()]
            if self.layout is None or self.renegotiate:
                self.layout = self._negotiate(spec)
                self.renegotiate = False
            vec, slots_used = self._encode(entries, losses, loss_steps, base, step, device)
        except Exception as exc:  # a local failure: still take part in the collective with zeros
            self._warn("encode", exc)
            vec, slots_used = self._zeros(base, step, device), False
        try:
            torch.distributed.all_reduce(vec, group=self.group)
        except Exception as exc:
            self.broken = True
            self._warn("collective", exc, "statistics are no longer combined across ranks; rank 0 records its own")
            return Combined(payload, losses, loss_steps) if self.writer else None
        self.exchanges += 1
        self._keep_header(vec)
        if not self.writer:
            return None
        try:
            return self._decode(vec, payload if slots_used else None, loss_steps, base, step)
        except Exception as exc:
            self._warn("decode", exc)
            return Combined(payload, losses, loss_steps)

    # -- layout ----------------------------------------------------------------------
    def _entries(self, payload: StepPayload) -> dict[tuple[str, str], tuple[str, torch.Tensor | float]]:
        """This rank's statistics as they are exchanged: ``(layer, stat) -> (how combined, value)``.

        Per-unit maxima become "ever active" indicators and minima "has negatives"; every layer gets a
        non-finite count (on CPU it exists only when non-zero); element counts are host floats.
        """
        out: dict[tuple[str, str], tuple[str, torch.Tensor | float]] = {}
        for (layer, stat), value in zip(payload.keys, payload.values, strict=True):
            if stat == "_dead":
                peak = payload.unit_peaks.get(layer)
                if peak is not None:
                    out[(layer, "_active")] = (ANY, peak.reshape(-1) > 0)
            elif stat == "_min":
                out[(layer, "_neg")] = (ANY, value < 0)
            elif stat in ACT_SUMS:
                out[(layer, stat)] = (ACT_SUMS[stat], value)
            elif stat in PARAM_NORMS:
                out[(layer, stat)] = (SQUARES if layer in self.sharded else MEAN, value)
            elif value.numel() == 1:
                out[(layer, stat)] = (MEAN, value)  # e.g. a tensor learning rate: the same on every rank
        for layer, stat in list(out):
            if stat == "_sum":
                out.setdefault((layer, "_nonfinite"), (SUM, 0.0))
        for layer, stat, v in payload.extras:
            if stat == "_n":
                out[(layer, "_n")] = (SUM, float(v))
        return out

    def _negotiate(self, spec: list[Slot] | None) -> list[Slot]:
        """Agree on the union of every rank's slots (rank order, then each rank's order)."""
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, spec, group=self.group)
        self.negotiations += 1
        layout: dict[tuple[str, str], Slot] = {}
        for rank_spec in gathered:
            for s in rank_spec or []:
                key = (s.layer, s.stat)
                old = layout.get(key)
                if old is None or s.length > old.length:
                    layout[key] = s if old is None else Slot(s.layer, s.stat, old.op, s.length)
        return list(layout.values())

    # -- encoding / decoding ---------------------------------------------------------
    def _zeros(self, base: int, step: int, device: torch.device) -> torch.Tensor:
        width = HEADER + 2 * (step - base + 1) + sum(s.length for s in self.layout or [])
        return torch.zeros(width, dtype=torch.float64, device=device)

    def _encode(
        self,
        entries: dict[tuple[str, str], tuple[str, torch.Tensor | float]] | None,
        losses: torch.Tensor | None,
        loss_steps: list[int],
        base: int,
        step: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, bool]:
        assert self.layout is not None
        n_loss = step - base + 1
        vec = self._zeros(base, step, device)
        head = [0.0, 0.0, 0.0]
        if self.writer and self._halt_vote:
            head[2] = 1.0
        if losses is not None and loss_steps:
            idx = [s - base for s in loss_steps]
            keep = [i for i, k in enumerate(idx) if 0 <= k < n_loss]
            if keep:
                pos = torch.tensor([idx[i] for i in keep], device=device)
                vals = losses.reshape(-1)[torch.tensor(keep, device=losses.device)].to(device, torch.float64)
                vec[HEADER + pos] = vals
                vec[HEADER + n_loss + pos] = 1.0
        if entries is None:
            vec[:HEADER] = torch.tensor(head, dtype=torch.float64, device=device)
            return vec, False
        placed = 0
        offset = HEADER + 2 * n_loss
        pieces: list[torch.Tensor] = []
        index: list[int] = []
        host_vals: list[float] = list(head)
        host_index: list[int] = list(range(HEADER))
        for s in self.layout:
            entry = entries.get((s.layer, s.stat))
            value = entry[1] if entry is not None else None
            if isinstance(value, float) and s.length == 1:  # values known on the host: one copy for all of them
                host_vals.append(value)
                host_index.append(offset)
                placed += 1
            elif isinstance(value, torch.Tensor) and value.numel() == s.length:
                pieces.append(_encoded(value, s.op).reshape(-1))
                index.extend(range(offset, offset + s.length))
                placed += 1
            offset += s.length
        if pieces:
            flat = torch.cat([p.to(device, torch.float64) for p in pieces])
            vec[torch.tensor(index, device=device)] = flat
        host_vals[0] = 1.0
        host_vals[1] = float(len(entries) - placed)
        vec[torch.tensor(host_index, device=device)] = torch.tensor(host_vals, dtype=torch.float64).to(device)
        return vec, True

    def _decode(
        self, vec: torch.Tensor, payload: StepPayload | None, loss_steps: list[int], base: int, step: int
    ) -> Combined:
        assert self.layout is not None
        n_loss = step - base + 1
        sums, counts = vec[HEADER : HEADER + n_loss], vec[HEADER + n_loss : HEADER + 2 * n_loss]
        losses = None
        if loss_steps:
            idx = torch.tensor([s - base for s in loss_steps], device=vec.device)
            c = counts[idx]
            losses = torch.where(c > 0, sums[idx] / c.clamp(min=1), torch.full_like(c, float("nan")))
        if payload is None:  # rank 0's own statistics failed: write the losses only
            return Combined(None, losses, list(loss_steps))
        ranks = vec[0].clamp(min=1)
        keys: list[tuple[str, str]] = []
        values: list[torch.Tensor] = []
        extras = [e for e in payload.extras if e[1] not in ("_n", "_units")]
        offset = HEADER + 2 * n_loss
        for s in self.layout:
            v = vec[offset : offset + s.length]
            offset += s.length
            if not payload.full and s.stat in FULL_STEP_SLOTS:
                continue  # a light logging step: not measured on any rank
            if s.stat == "_active":
                keys.append((s.layer, "_dead"))
                values.append(s.length - (v > 0).sum())
                extras.append((s.layer, "_units", float(s.length)))
                continue
            if s.stat == "_neg":
                keys.append((s.layer, "_min"))
                values.append(torch.where(v[0] > 0, -1.0, 0.0))
                continue
            keys.append((s.layer, s.stat))
            if s.op == SQUARES:
                values.append(v[0].clamp(min=0).sqrt())
            elif s.op == MEAN:
                values.append(v[0] / ranks)
            else:
                values.append(v[0])
        combined = StepPayload(keys, values, extras, payload.hist_keys, payload.hists, full=payload.full)
        return Combined(combined, losses, list(loss_steps))

    # -- header (read one exchange late on accelerators: no device sync) -------------
    def _keep_header(self, vec: torch.Tensor) -> None:
        head = vec[:HEADER]
        if head.device.type == "cuda":
            host = torch.empty(HEADER, dtype=torch.float64, pin_memory=True)
            host.copy_(head, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending_header = (host, event)
        else:
            self._pending_header = (head.cpu(), None)
            self._absorb_header()

    def _absorb_header(self) -> None:
        if self._pending_header is None:
            return
        host, event = self._pending_header
        self._pending_header = None
        if event is not None:
            event.synchronize()
        _, unplaced, halt = host.tolist()
        if unplaced > 0:
            self.renegotiate = True
            self.unplaced_seen += int(unplaced)
        if halt > 0:
            self.agreed_halt = True

    def _warn(self, what: str, exc: BaseException, consequence: str = "this step's statistics may be partial") -> None:
        if what in self._warned:
            return
        self._warned.add(what)
        warnings.warn(
            f"nndiag: combining statistics across ranks failed on rank {self.rank} ({what}: "
            f"{type(exc).__name__}: {exc}); {consequence}. Training continues.",
            NndiagInternalWarning,
            stacklevel=3,
        )


def _length(value: torch.Tensor | float) -> int:
    return 1 if isinstance(value, float) else int(value.numel())


def _encoded(value: torch.Tensor, op: str) -> torch.Tensor:
    v = value.detach().to(torch.float64)
    if op == SQUARES:
        return v * v
    return v  # sums, means and "any" indicators (already 0/1) travel as they are


def _device_of(payload: StepPayload | None, losses: torch.Tensor | None) -> torch.device:
    if payload is not None and payload.values:
        return payload.values[0].device
    if losses is not None:
        return losses.device
    return collective_device()


__all__ = [
    "Combined",
    "LocalCombiner",
    "RankCombiner",
    "Slot",
    "StepPayload",
    "agree",
    "combiner_for",
    "is_dtensor",
    "local",
    "sharded_parameters",
    "writes_here",
]
