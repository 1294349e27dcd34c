"""The writer handles packets in bursts, and a drain, a close or a filling queue ends its wait at once.

Timing margins are wide (a 5 s window against a 1 s bound) so that a loaded machine cannot fail them.
"""

from __future__ import annotations

import threading
import time

import torch

from nndiag.collect.packet import Packet
from nndiag.pipeline import Pipeline
from nndiag.subscribers import Subscriber


class Seen(Subscriber):
    """When each packet's rows reached the subscribers, and in which wake-up of the writer."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.steps: list[int] = []
        self.first = threading.Event()

    def on_rows(self, packet, rows) -> None:
        self.times.append(time.monotonic())
        self.steps.append(packet.step)
        self.first.set()


def packet(step: int) -> Packet:
    return Packet.build(step, losses=torch.tensor([1.0]), loss_steps=[step])


def test_packets_arriving_close_together_are_handled_in_one_burst_in_order():
    seen = Seen()
    pipe = Pipeline(subscribers=[seen], batch_seconds=0.3)
    start = time.monotonic()
    for step in range(10):
        pipe.submit(packet(step))
        time.sleep(0.005)
    assert seen.first.wait(5)
    time.sleep(0.1)
    pipe.close()
    assert seen.steps == list(range(10))
    # the first packet waited for the others: none was handled before the window, all together after it
    assert seen.times[0] - start >= 0.25
    assert seen.times[-1] - seen.times[0] < 0.25


def test_no_window_handles_each_packet_at_once():
    seen = Seen()
    pipe = Pipeline(subscribers=[seen], batch_seconds=0.0)
    start = time.monotonic()
    pipe.submit(packet(0))
    assert seen.first.wait(5)
    assert seen.times[0] - start < 1.0
    pipe.close()


def test_drain_and_close_do_not_wait_for_the_window():
    seen = Seen()
    pipe = Pipeline(subscribers=[seen], batch_seconds=5.0)
    pipe.submit(packet(0))
    start = time.monotonic()
    assert pipe.drain(timeout=10)
    assert seen.steps == [0] and time.monotonic() - start < 1.0
    pipe.submit(packet(1))
    start = time.monotonic()
    pipe.close()
    assert seen.steps == [0, 1] and time.monotonic() - start < 1.0


def test_a_filling_queue_ends_the_wait():
    seen = Seen()
    pipe = Pipeline(subscribers=[seen], batch_seconds=5.0, max_queue=8)  # woken at 2 queued items
    start = time.monotonic()
    for step in range(3):
        pipe.submit(packet(step))
    assert seen.first.wait(5)
    assert seen.times[0] - start < 1.0
    pipe.close()
    assert seen.steps == [0, 1, 2] and pipe.dropped == 0


class Urgency(Subscriber):
    """The ``urgent`` flag each packet was handed on with."""

    def __init__(self) -> None:
        self.flags: list[tuple[int, bool]] = []

    def after_packet(self, packet, urgent) -> None:
        self.flags.append((packet.step, urgent))


def test_only_the_first_non_finite_loss_makes_a_packet_urgent():
    seen = Urgency()
    pipe = Pipeline(subscribers=[seen], batch_seconds=0.0)
    nan = float("nan")
    pipe.submit(Packet.build(0, losses=torch.tensor([1.0]), loss_steps=[0]))
    # a NaN statistic that is not the loss (an activation std) is not urgent
    pipe.submit(Packet.build(1, torch.tensor([1.0]), [1], [("fc", "act_std")], [torch.tensor(nan)]))
    pipe.submit(Packet.build(3, losses=torch.tensor([2.0, float("inf")]), loss_steps=[2, 3]))
    pipe.submit(Packet.build(4, losses=torch.tensor([nan]), loss_steps=[4]))  # not the first any more
    pipe.close()
    assert seen.flags == [(0, False), (1, False), (3, True), (4, False)]


def test_the_writer_waits_less_where_nndiag_acts_on_its_diagnoses(tmp_path):
    """200 ms bursts by default; 50 ms with halt_on or a remedy (a NaN loss stops or repairs the run sooner)."""
    from torch import nn

    from nndiag import Monitor
    from nndiag.pipeline import ACTING_BATCH_SECONDS, BATCH_SECONDS

    assert ACTING_BATCH_SECONDS < BATCH_SECONDS
    waits = {}
    for name, kwargs in (("plain", {}), ("halt_on", {"halt_on": ["nonfinite_loss"]}), ("remedy", {"remedy": True})):
        model = nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = Monitor(model, opt, log_dir=tmp_path / name, report=False, **kwargs)
        waits[name] = mon.session.pipeline.batch_seconds
        if name == "plain":
            mon.session.halting(("nonfinite_loss",))  # an adapter naming the codes only when it asks
            waits["late halt_on"] = mon.session.pipeline.batch_seconds
        mon.close()
    assert waits == {
        "plain": BATCH_SECONDS,
        "late halt_on": ACTING_BATCH_SECONDS,
        "halt_on": ACTING_BATCH_SECONDS,
        "remedy": ACTING_BATCH_SECONDS,
    }
