"""Long runs keep nndiag's memory flat: a bounded in-memory window, the whole run in the store.

``benchmarks/long_run_memory.py`` measures 100,000 real steps; these tests check the same
properties in seconds: many logging steps through the real Monitor/Session/Pipeline with a small
``memory_rows`` window (traced memory stops growing, ``history`` still returns every step from the
store), and the window itself against a reference implementation.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nndiag import Monitor, load_run
from nndiag.advice import AdvisorLoop
from nndiag.collect.packet import Packet
from nndiag.pipeline import Pipeline
from nndiag.rows import COLUMNS, Rows
from nndiag.sinks.memory import MemoryHistory
from nndiag.store.writer import RunStore

WINDOW = 1500  # rows kept in memory by these tests


def _train(mon: Monitor, model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int) -> None:
    gen = torch.Generator().manual_seed(start)
    for _ in range(steps):
        x = torch.randn(16, 8, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss.detach())
        if mon.steps % 100 == 0:
            assert mon.session.pipeline.drain()  # schedule=1 under tracemalloc: let the writer keep up (no drops)


def _traced(mon: Monitor) -> int:
    mon.session.pipeline.drain()
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_memory_stays_flat_and_history_returns_the_whole_run(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    tracemalloc.start()
    mon = Monitor(model, opt, log_dir=tmp_path, schedule=1, memory_rows=WINDOW, flush_seconds=0.5, report=False)
    try:
        try:
            _train(mon, model, opt, 300, start=0)  # the window is full from here on
            memory = mon.session.pipeline.memory
            assert not memory.complete
            before = _traced(mon)
            rows_before = len(load_run(mon.log_dir).history)
            _train(mon, model, opt, 1200, start=300)
            after = _traced(mon)
        finally:
            tracemalloc.stop()
        added = len(load_run(mon.log_dir).history) - rows_before
        assert added >= 1200 * 20  # every step adds its loss and the per-layer statistics
        # Kept in memory, these rows would take at least 20 bytes each (the window's own cost per row);
        # held to a bounded window, growth is a small fraction of that (whatever is in flight at the end).
        unbounded = 20 * added
        assert after - before < 0.15 * unbounded, (after - before, unbounded)
        assert memory.rows <= WINDOW + 60  # the window, plus at most the newest packet
        window = memory.frame()
        early = window[window.step < 1000]
        assert len(early) <= WINDOW // 10 and early.step.min() == 0  # the run's start is pinned ...
        assert window.step.max() == 1499  # ... the rest are recent steps ...
        h = mon.history  # ... yet history is the whole run, read back from the store
        assert h.step.min() == 0 and h.step.max() == 1499
        loss = h[h.stat == "loss"]
        assert loss.step.tolist() == list(range(1500))
        assert sorted(h[h.layer == "0"].step.unique().tolist()) == list(range(1500))
        pd.testing.assert_frame_equal(
            h[h.step.isin(set(window.step))].reset_index(drop=True), window, check_exact=False, rtol=1e-6
        )
    finally:
        mon.close()
    assert mon.history.step.max() == 1499  # after close too


def test_pipeline_window_bounds_what_the_advisor_checks(tmp_path):
    """Synthetic packets through the real Pipeline with a store and the advisor loop: each check sees the window."""
    seen: list[int] = []

    class CountingLoop(AdvisorLoop):
        def due(self, urgent: bool = False) -> bool:  # every 200 packets, whatever the checks cost
            self._packets += 1
            return self._packets % 200 == 0

        def run(self, history: pd.DataFrame, facts: dict) -> list:  # type: ignore[override]
            seen.append(len(history))
            return super().run(history, facts)

    store = RunStore(tmp_path)
    pipe = Pipeline(memory=MemoryHistory(WINDOW), store=store, advice=CountingLoop(log=False))
    keys = [(f"layer{i}", stat) for i in range(5) for stat in ("act_mean", "act_std", "dead_frac")]
    for step in range(0, 6000, 2):
        losses = torch.tensor([2.0 - step * 1e-4, 2.0 - (step + 1) * 1e-4])
        scalars = [torch.tensor(0.5)] * len(keys)
        pipe.submit(Packet.build(step + 1, losses=losses, loss_steps=[step, step + 1], keys=keys, scalars=scalars))
        if step % 200 == 0:
            assert pipe.drain()  # the producer is far faster than a real training loop: no dropped packets
    pipe.close()
    assert pipe.dropped == 0
    assert len(seen) >= 10  # periodic checks and the final one
    assert max(seen) <= WINDOW + 17  # never the whole run (51,000 rows), only the bounded window
    assert not pipe.memory.complete
    run = load_run(tmp_path).history
    assert len(run) == 3000 * 17 and run[run.stat == "loss"].step.tolist() == list(range(6000))


def _reference(packets: list[Rows], max_rows: int) -> pd.DataFrame:
    """The window as specified: whole packets; the leading packets that fit in max_rows // 10 are pinned
    (until the first drop); beyond max_rows the oldest other packets go, the newest is always kept."""
    head: list[Rows] = []
    kept: list[Rows] = []
    head_open = True
    for rows in packets:
        if not len(rows):
            continue
        if head_open and not kept and sum(len(r) for r in head) + len(rows) <= max_rows // 10:
            head.append(rows)
        else:
            kept.append(rows)
        while sum(len(r) for r in head + kept) > max_rows and len(kept) > 1:
            head_open = False
            kept.pop(0)
        if sum(len(r) for r in head + kept) > max_rows:
            head_open = False  # a drop was due (only the newest packet was left to keep)
    if not head + kept:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.concat([r.frame() for r in head + kept], ignore_index=True)
    return df.sort_values("step", kind="stable", ignore_index=True)


packet_st = st.lists(
    st.tuples(st.integers(0, 50), st.sampled_from(["", "fc", "fc.weight"]), st.sampled_from(["loss", "act_std"])),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(packet_st, max_size=40), st.integers(1, 40))
def test_memory_window_matches_reference(packets, max_rows):
    mem = MemoryHistory(max_rows)
    rows = [
        Rows(
            np.array([p[0] for p in pk], dtype=np.int64),
            [p[1] for p in pk],
            [p[2] for p in pk],
            np.arange(len(pk), dtype=np.float64) + 0.5 * i,
        )
        for i, pk in enumerate(packets)
    ]
    for r in rows:
        mem.write_rows(r)
    expected = _reference(rows, max_rows)
    got = mem.frame()
    assert list(got.columns) == COLUMNS
    assert got.step.tolist() == expected.step.tolist()
    assert got.layer.tolist() == expected.layer.tolist()
    assert got.stat.tolist() == expected.stat.tolist()
    assert got.value.tolist() == expected.value.tolist()
    total = sum(len(r) for r in rows)
    assert mem.complete == (len(expected) == total)
    assert mem.rows == len(expected)


def test_window_memory_is_bounded_per_row():
    """The window's arrays: ~20 bytes a row (step, value, one code), capacity at most 25% above the window."""
    mem = MemoryHistory(10_000)
    layers = [f"block{i}.conv" for i in range(50)]
    for step in range(2000):
        n = len(layers)
        mem.write_rows(Rows(np.full(n, step), layers, ["act_std"] * n, np.ones(n)))
    assert mem.rows <= 10_000
    assert mem.nbytes <= 1.25 * 20 * (10_000 + len(layers)) + 20 * 1024
    frame = mem.frame()
    # the first 1,000 rows (steps 0-19) are pinned; the other 9,000 are the newest 180 steps
    assert sorted(set(frame.step)) == [*range(20), *range(2000 - 9_000 // 50, 2000)]
    plain = Rows(np.array([0]), ["fc"], ["act_std"], np.array([1.0])).frame()  # how a packet's rows look
    assert frame.dtypes.tolist() == plain.dtypes.tolist()  # the public frame's columns are unchanged


@pytest.mark.parametrize("max_rows", [1, 3])
def test_newest_packet_is_kept_even_when_larger_than_the_window(max_rows):
    mem = MemoryHistory(max_rows)
    mem.write_rows(Rows(np.array([0]), [""], ["loss"], np.array([1.0])))
    mem.write_rows(Rows(np.array([1] * 5), [""] * 5, ["loss"] * 5, np.arange(5.0)))
    assert mem.frame().value.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert not mem.complete
