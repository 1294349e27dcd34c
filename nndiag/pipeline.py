"""The background writer: decodes packets off the training thread and feeds every sink.

The training thread only enqueues (never blocks: when the queue is full the step is
dropped with one warning). The writer thread waits for the packet's host copy,
decodes it into rows and publishes them to its subscribers (:mod:`nndiag.subscribers`):
memory history, run store, TensorBoard and the advisors, in that order; the sinks are
flushed every ``flush_seconds``. Packets are handled in bursts: after the first packet arrives the
writer waits ``batch_seconds`` (200 ms; 50 ms where nndiag acts on its diagnoses, see
:data:`ACTING_BATCH_SECONDS`) for the next ones, so that at every-step logging it wakes a few times a
second, not at every step: each wake-up costs ~0.7 ms of writer CPU on a 2-core machine (cold caches,
the interpreter lock taken from the training thread; see docs/benchmarks.md). A drain, close, or a
queue a quarter full ends the wait at once.
Each sink is guarded separately, so a full disk stops the store, not TensorBoard or ``cb.history``.

Example:
    >>> import torch
    >>> from nndiag.collect.packet import Packet
    >>> from nndiag.pipeline import Pipeline
    >>> from nndiag.sinks.memory import MemoryHistory
    >>> mem = MemoryHistory()
    >>> pipe = Pipeline(memory=mem)
    >>> pipe.submit(Packet.build(0, losses=torch.tensor([1.5]), loss_steps=[0]))
    >>> pipe.close()
    >>> mem.frame().value.tolist()
    [1.5]

"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import warnings
from typing import Any

import numpy as np

from nndiag import quantities as Q
from nndiag.advice import AdvisorLoop
from nndiag.collect.packet import Packet
from nndiag.diagnosis import Diagnosis
from nndiag.facts import ModelFacts
from nndiag.guard import ErrorGuard, NndiagInternalWarning
from nndiag.sinks.memory import MemoryHistory
from nndiag.sinks.tensorboard import TensorBoardSink
from nndiag.store.writer import RunStore
from nndiag.subscribers import Advising, MemorySubscriber, StoreSubscriber, Subscriber, TensorBoardSubscriber

_STOP = object()


BATCH_SECONDS = 0.2  # the writer's wait for more packets after the first (a burst per wake-up)
# ... where diagnoses stop or repair the run (halt_on, remedy): a NaN loss is seen within ~50 ms
ACTING_BATCH_SECONDS = 0.05


class Pipeline:
    """Owns the writer thread and publishes every queued item to its subscribers.

    ``memory``, ``store`` and ``tensorboard`` are the sinks (subscribed in that order); ``advice``
    subscribes the advisors after them; ``subscribers`` adds others (after the advisors).
    """

    def __init__(
        self,
        memory: MemoryHistory | None = None,
        store: RunStore | None = None,
        tensorboard: TensorBoardSink | None = None,
        guard: ErrorGuard | None = None,
        flush_seconds: float = 2.0,
        max_queue: int = 256,
        advice: AdvisorLoop | None = None,
        subscribers: list[Subscriber] | None = None,
        batch_seconds: float = BATCH_SECONDS,
    ) -> None:
        self.memory = memory if memory is not None else MemoryHistory()
        self.store = store
        self.tensorboard = tensorboard
        self.guard = guard or ErrorGuard()
        self.flush_seconds = flush_seconds
        self.batch_seconds = batch_seconds
        self.facts: ModelFacts | None = None  # the run's model facts, once the first logging step sent them
        self.advice = advice
        self.subscribers: list[Subscriber] = [MemorySubscriber(self.memory)]
        if store is not None:
            self.subscribers.append(StoreSubscriber(store, self.guard))
        if tensorboard is not None:
            self.subscribers.append(TensorBoardSubscriber(tensorboard, self.guard))
        if advice is not None:
            self.subscribers.append(
                Advising(advice, self.memory, lambda: self.facts, self.publish_diagnoses, self.guard)
            )
        self.subscribers += subscribers or []
        self._nonfinite_seen = False  # the first non-finite loss makes an advisor check urgent
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._wake = threading.Event()  # ends the writer's wait for more packets early
        self._wake_at = max(1, max_queue // 4)
        self._last_flush = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="nndiag-writer", daemon=True)
        self._closed = False
        self._thread.start()

    # -- training thread -------------------------------------------------------------
    def submit(self, item: Any) -> None:
        """Enqueue a :class:`Packet` or ``("facts", ModelFacts)``; never blocks."""
        if self._closed:
            return
        try:
            self._queue.put_nowait(item)
            if self._queue.qsize() >= self._wake_at:
                self._wake.set()
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                warnings.warn(
                    "nndiag: the background writer is behind; statistics of some logging steps are being dropped "
                    "to keep training at full speed. Use a sparser schedule to avoid this.",
                    NndiagInternalWarning,
                    stacklevel=2,
                )

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until everything submitted so far is written and committed; False on timeout."""
        if self._closed or not self._thread.is_alive():
            return True
        done = threading.Event()
        try:
            self._queue.put(("callback", done.set), timeout=timeout)
        except queue.Full:
            return False
        self._wake.set()
        return done.wait(timeout)

    def close(self, status: str = "finished", timeout: float = 60.0) -> None:
        """Write everything pending, stop the thread and close the sinks."""
        if self._closed:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._wake.set()
        self._thread.join(timeout)
        self._closed = True
        for sub in self.subscribers:
            sub.close(status)

    # -- writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                self._flush()
                continue
            if isinstance(first, Packet) and self.batch_seconds > 0:
                self._wake.wait(self.batch_seconds)  # the next steps' packets: one burst of work, not one per step
            self._wake.clear()
            for item in self._burst(first):
                if item is _STOP:
                    for sub in self.subscribers:
                        sub.on_stop()  # the advisors' final check, on everything recorded
                    self._flush()
                    return
                urgent = self.guard.run("background writer", self._handle, item)
                if isinstance(item, Packet):
                    for sub in self.subscribers:
                        sub.after_packet(item, bool(urgent))
            if time.monotonic() - self._last_flush >= self.flush_seconds:
                self._flush()

    def _burst(self, first: Any) -> list[Any]:
        """``first`` and everything queued behind it now (in order)."""
        items = [first]
        while items[-1] is not _STOP:  # nothing after the stop is taken
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _handle(self, item: Any) -> bool:
        """Publish one queued item; True when it carried the run's first non-finite loss (check now)."""
        if isinstance(item, Packet):
            rows = item.decode(finalize=not self.guard.disabled("statistics finalisation"))
            if item.failures:  # one report per packet; after 20 the raw statistics are no longer finalised
                self.guard.report("statistics finalisation", item.failures[0])
            for sub in self.subscribers:
                sub.on_rows(item, rows)
            if self._nonfinite_seen:
                return False
            bad = np.flatnonzero(~np.isfinite(rows.value))  # nearly always empty: no per-row Python
            self._nonfinite_seen = any(rows.stats[i] == Q.LOSS for i in bad.tolist())
            return self._nonfinite_seen
        if item[0] == "facts":
            self.facts = ModelFacts.from_dict(item[1])
            for sub in self.subscribers:
                sub.on_facts(self.facts)
        elif item[0] == "callback":
            self._flush()
            item[1]()
        return False

    def publish_diagnoses(self, step: int, changed: list[Diagnosis], ordered: list[Diagnosis]) -> None:
        """Hand changed diagnoses to every subscriber (writer thread: the advisors', and nndiag's own records)."""
        for sub in self.subscribers:
            sub.on_diagnoses(step, changed, ordered)

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        for sub in self.subscribers:
            sub.flush()
