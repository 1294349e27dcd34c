"""What the background writer publishes to: memory history, run store, TensorBoard, the advisors.

The :class:`~nndiag.pipeline.Pipeline` decodes each queued item once, on its writer thread, and
hands it to its subscribers in order. Every method runs on the writer thread, never on the
training thread. Each subscriber guards its own sink (a full disk stops the store, not
TensorBoard or ``cb.history``) under the site names of :class:`~nndiag.guard.ErrorGuard`.

Events, in the order the writer thread sends them:

* ``on_rows(packet, rows)``: one packet's decoded rows;
* ``after_packet(packet, urgent)``: after every subscriber had the rows (``urgent``: the run's
  first non-finite loss arrived); the advisors decide here whether a check is due;
* ``on_facts(facts)``: the model facts (once per run);
* ``on_diagnoses(step, changed, ordered)``: a check changed diagnoses (``ordered``: all of them,
  most severe first);
* ``on_stop()``: everything is written (the advisors' final check);
* ``flush()``, then ``close(status)`` after the thread ended.

Example:
    >>> import numpy as np
    >>> from nndiag.rows import Rows
    >>> from nndiag.sinks.memory import MemoryHistory
    >>> mem = MemoryHistory()
    >>> MemorySubscriber(mem).on_rows(None, Rows(np.array([0]), [""], ["loss"], np.array([2.0])))
    >>> mem.frame().value.tolist()
    [2.0]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from nndiag.advice import AdvisorLoop
from nndiag.advisor import by_severity
from nndiag.diagnosis import Diagnosis
from nndiag.facts import ModelFacts
from nndiag.guard import ErrorGuard
from nndiag.rows import Rows
from nndiag.sinks.memory import MemoryHistory
from nndiag.sinks.tensorboard import TensorBoardSink
from nndiag.store.writer import RunStore


class Subscriber:
    """A receiver of the writer thread's events; every method does nothing unless overridden."""

    def on_rows(self, packet: Any, rows: Rows) -> None:
        """One packet's decoded rows."""

    def after_packet(self, packet: Any, urgent: bool) -> None:
        """After every subscriber had the packet's rows."""

    def on_facts(self, facts: ModelFacts) -> None:
        """The run's model facts."""

    def on_diagnoses(self, step: int, changed: list[Diagnosis], ordered: list[Diagnosis]) -> None:
        """A check changed some diagnoses."""

    def on_stop(self) -> None:
        """Everything submitted has been handed out."""

    def flush(self) -> None:
        """Make what was written durable."""

    def close(self, status: str) -> None:
        """The writer thread ended."""


class MemorySubscriber(Subscriber):
    """``cb.history``: the in-memory window of the history (unguarded: the writer's own site)."""

    def __init__(self, memory: MemoryHistory) -> None:
        self.memory = memory

    def on_rows(self, packet: Any, rows: Rows) -> None:
        """Append the rows."""
        self.memory.write_rows(rows)


class StoreSubscriber(Subscriber):
    """The SQLite run store (site ``run store``)."""

    def __init__(self, store: RunStore, guard: ErrorGuard) -> None:
        self.store, self.guard = store, guard

    def on_rows(self, packet: Any, rows: Rows) -> None:
        """Append the rows."""
        self.guard.run("run store", self.store.write_rows, rows)

    def on_facts(self, facts: ModelFacts) -> None:
        """Store the facts' JSON in ``meta['facts']``."""
        self.guard.run("run store", self.store.write_meta, "facts", facts.to_dict())

    def on_diagnoses(self, step: int, changed: list[Diagnosis], ordered: list[Diagnosis]) -> None:
        """Upsert the changed diagnoses."""
        self.guard.run("run store", self.store.write_diagnoses, changed)

    def flush(self) -> None:
        """Commit."""
        self.guard.run("run store", self.store.flush)

    def close(self, status: str) -> None:
        """Commit, record ``status`` and close the file."""
        self.guard.run("run store", self.store.close, status)


class TensorBoardSubscriber(Subscriber):
    """TensorBoard scalars, histograms and the diagnoses table (sites ``tensorboard``, ``tensorboard histograms``)."""

    def __init__(self, sink: TensorBoardSink, guard: ErrorGuard) -> None:
        self.sink, self.guard = sink, guard

    def on_rows(self, packet: Any, rows: Rows) -> None:
        """Scalars, then the packet's histograms."""
        self.guard.run("tensorboard", self.sink.write_rows, rows)
        if packet is not None and packet.hist_keys:
            self.guard.run("tensorboard histograms", self.sink.write_histograms, packet.step, packet.histograms())

    def on_diagnoses(self, step: int, changed: list[Diagnosis], ordered: list[Diagnosis]) -> None:
        """The table, when a diagnosis appeared or resolved (the sink decides; it writes the final one at close)."""
        self.guard.run("tensorboard", self.sink.write_diagnoses, step, ordered)

    def flush(self) -> None:
        """Flush the event file."""
        self.guard.run("tensorboard", self.sink.flush)

    def close(self, status: str) -> None:
        """Flush (and close the writer nndiag created)."""
        self.guard.run("tensorboard", self.sink.close)


class Advising(Subscriber):
    """The advisors as a subscriber: throttled checks on the writer thread (site ``advisors``).

    A check runs when :meth:`AdvisorLoop.due` says so after a packet (every 5 s or 20 logging
    steps, at once on the first non-finite loss), and once more when everything is written.
    Changed diagnoses are published back through ``publish`` (to the store and TensorBoard).
    """

    def __init__(
        self,
        loop: AdvisorLoop,
        memory: MemoryHistory,
        facts: Callable[[], ModelFacts | None],
        publish: Callable[[int, list[Diagnosis], list[Diagnosis]], None],
        guard: ErrorGuard,
    ) -> None:
        self.loop, self.memory, self.facts, self.publish, self.guard = loop, memory, facts, publish, guard

    def after_packet(self, packet: Any, urgent: bool) -> None:
        """Check when a check is due."""
        if self.loop.due(urgent):
            self.guard.run("advisors", self.check)

    def on_stop(self) -> None:
        """The final check, on everything recorded (end-of-run rules speak: the run has finished)."""
        self.guard.run("advisors", self.check, True)

    def check(self, finished: bool = False) -> None:
        """Run the advisors on the history so far; publish what changed."""
        history = self.memory.frame()
        if history.empty:
            return
        facts = self.facts() or ModelFacts()
        # `finished` only when set: AdvisorLoop subclasses that override run(history, facts) keep working
        changed = (
            self.loop.run(history, facts, finished=True)
            if finished and _takes_finished(self.loop.run)
            else self.loop.run(history, facts)
        )
        if changed:
            self.publish(int(history.step.max()), changed, by_severity(self.loop.diagnoses))


def _takes_finished(run: Callable[..., Any]) -> bool:
    """Whether an advisor loop's ``run`` accepts ``finished`` (subclasses written before it do not)."""
    try:
        params = inspect.signature(run).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "finished" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


__all__ = [
    "Advising",
    "MemorySubscriber",
    "StoreSubscriber",
    "Subscriber",
    "TensorBoardSubscriber",
]
