"""Running the advisors during training: periodically on the writer thread, and once at the end.

:class:`AdvisorLoop` decides when a check is due (every 5 s or 20 logging steps, at once when the
loss turns non-finite, but never sooner than 100x the last check's CPU time after it, so the rules
never take a noticeable share of the CPU; between two rules the training thread gets the
interpreter), runs the :class:`~nndiag.advisor.Advisor` over the in-memory history, and logs each
diagnosis once when it first appears (rank zero only: nndiag records on rank zero).

Example:
    >>> import pandas as pd
    >>> from nndiag.advice import AdvisorLoop
    >>> loop = AdvisorLoop(min_interval=0.0, log=False)
    >>> loop.due()
    True
    >>> h = pd.DataFrame({"step": [0, 1], "layer": ["", ""], "stat": ["loss"] * 2, "value": [2.3, float("nan")]})
    >>> [d.code for d in loop.run(h, {})]
    ['nonfinite_loss']
    >>> loop.run(h, {})[0].count
    2
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from nndiag.advisor import Advisor, by_severity
from nndiag.diagnosis import Diagnosis
from nndiag.facts import ModelFacts
from nndiag.log import get_logger
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.view import RunView

_LEVEL = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}
CHECK_SWITCH_INTERVAL = 0.0002  # seconds: the interpreter's switch interval while a check runs (see fine_switching)
COST_FACTOR = 100  # a check that cost c seconds of CPU is followed by at least 100*c without checks
YIELD_SECONDS = 0.0005  # the pause between two rules (see _yield)


class AdvisorLoop:
    """Periodic advisor checks with logging of new diagnoses."""

    def __init__(
        self,
        config: AdvisorConfig | None = None,
        min_interval: float = 5.0,
        extra_facts: dict[str, Any] | None = None,
        log: bool = True,
        every_packets: int = 20,
    ) -> None:
        self.advisor = Advisor(config)
        self.min_interval = min_interval
        self.extra_facts = extra_facts or {}
        self.log = log
        self.every_packets = every_packets
        self._last = time.monotonic()  # the first check waits for some history (or a NaN loss)
        self._cost = 0.0
        self._packets = 0
        self._logged: set[tuple[str, str | None]] = set()
        self.advisor.pause = _yield
        self.forgotten: tuple[tuple[int, int], ...] = ()  # step ranges the rules no longer see (rolled back)
        self.checked_step = -1  # the last step the latest check saw

    @property
    def diagnoses(self) -> list[Diagnosis]:
        """All diagnoses so far (the list object is updated in place)."""
        return self.advisor.diagnoses

    def restore(self, diagnoses: list[Diagnosis]) -> None:
        """A resumed run's open diagnoses: tracked (and already logged before the checkpoint)."""
        self.advisor.restore(diagnoses)
        self._logged.update((d.code, d.layer) for d in diagnoses)

    def forget(self, first: int, last: int) -> None:
        """Hide steps ``first..last`` from the rules from now on (a rolled-back stretch, a skipped batch).

        The run store and ``history`` keep them; only the advisors' view drops them, so that what
        was undone no longer holds as a diagnosis (it resolves at the next check).
        """
        if last >= first:
            self.forgotten = (*self.forgotten, (first, last))

    def due(self, urgent: bool = False) -> bool:
        """Whether a check is due after one more logging packet.

        Due every ``min_interval`` seconds, or every ``every_packets`` packets, or at once when
        ``urgent`` (the first non-finite loss arrived); otherwise never sooner than ``COST_FACTOR``
        times the last check's CPU time after it. The rules are Python: while they run, the training
        thread waits for the interpreter lock, so their CPU time is what training pays; the budget
        keeps it near 1%.
        """
        self._packets += 1
        if urgent:
            return True
        elapsed = time.monotonic() - self._last
        if elapsed < COST_FACTOR * self._cost:
            return False
        return elapsed >= self.min_interval or self._packets >= self.every_packets

    def run(self, history: pd.DataFrame, facts: ModelFacts | dict[str, Any], finished: bool = False) -> list[Diagnosis]:
        """Check now; return the diagnoses that are new, updated or resolved (``finished``: the final check)."""
        start = time.thread_time()
        self._packets = 0
        forgotten = self.forgotten
        if forgotten and len(history):
            steps = history.step.to_numpy()
            drop = np.zeros(len(steps), dtype=bool)
            for first, last in forgotten:
                drop |= (steps >= first) & (steps <= last)
            history = history[~drop]
        seen = int(history.step.max()) if len(history) else -1
        with fine_switching():
            changed = self.advisor.check(RunView(history, self.with_extra(facts), finished))
        self.checked_step = seen  # after the check: a reader of both sees diagnoses at least this fresh
        self._last = time.monotonic()
        self._cost = time.thread_time() - start
        if self.log:
            for d in changed:
                key = (d.code, d.layer)
                if not d.resolved and key not in self._logged:
                    self._logged.add(key)
                    get_logger().log(_LEVEL[d.severity], f"nndiag {d.severity}: {d.headline()}: {d.message}")
        return changed

    def with_extra(self, facts: ModelFacts | dict[str, Any]) -> ModelFacts:
        """``facts`` with this loop's extra facts (``num_classes``) set."""
        if not self.extra_facts:
            return ModelFacts.from_dict(facts)
        if isinstance(facts, ModelFacts):
            facts = facts.to_dict()
        return ModelFacts.from_dict({**facts, **self.extra_facts})

    def summary(self, steps: int) -> str:
        """A readable end-of-training summary of all diagnoses, most severe first."""
        diags = by_severity(self.diagnoses)
        if not diags:
            return f"nndiag: no problems found in {steps} optimizer steps."
        if all(d.severity == "info" for d in diags):  # as the report's verdict puts it: advice is no problem
            noun = "piece" if len(diags) == 1 else "pieces"
            lines = [f"nndiag: no problems found in {steps} optimizer steps; {len(diags)} {noun} of advice:"]
        else:
            noun = "diagnosis" if len(diags) == 1 else "diagnoses"
            lines = [f"nndiag: {len(diags)} {noun} in {steps} optimizer steps:"]
        for d in diags:
            lines.append(f"  {d.severity.upper():7} {d.headline()}: {d.message}")
            if d.suggestions:
                lines.append(f"          try first: {d.suggestions[0]}")
        return "\n".join(lines)


def _yield() -> None:
    """Let the training thread run between two rules.

    A rule takes ~0.1-4 ms of pure Python; the training thread, wanting the interpreter back after
    each tensor operation, would otherwise wait up to the switch interval (5 ms) each time, and a
    whole check (~20 ms) would land on one step as a stall. A short sleep releases the lock at once.
    """
    time.sleep(YIELD_SECONDS)


@contextlib.contextmanager
def fine_switching(interval: float = CHECK_SWITCH_INTERVAL) -> Iterator[None]:
    """Shorten the interpreter's switch interval while the block runs (the previous one is restored).

    A check is ~20-50 ms of Python on the writer thread. The training thread gives up the
    interpreter lock in every tensor operation and, to get it back, waits until the writer is
    asked to hand it over: after the switch interval, 5 ms by default. Over a whole check that made
    one training step wait tens to hundreds of milliseconds; at 0.2 ms the two threads alternate
    finely and the check's cost spreads thinly over the steps it overlaps.

    Example:
        >>> import sys
        >>> before = sys.getswitchinterval()
        >>> with fine_switching(0.001):
        ...     round(sys.getswitchinterval(), 6)
        0.001
        >>> sys.getswitchinterval() == before
        True
    """
    previous = sys.getswitchinterval()
    if previous <= interval:  # someone chose a finer one already: keep it
        yield
        return
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)
