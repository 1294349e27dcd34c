"""Sinks work out names once per packet layout (``nndiag.rows.LayoutCache``): same results as per row.

The writer thread sees the same layout (light logging steps, full ones) step after step; the memory
history's codes, the store's series ids and TensorBoard's tags are cached per layout. These tests
check that the cache changes nothing that is written, including new statistics, failures and NaN.
"""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from nndiag.rows import LayoutCache, Rows
from nndiag.sinks.memory import MemoryHistory
from nndiag.sinks.tensorboard import TensorBoardSink
from nndiag.store.reader import load_run
from nndiag.store.writer import RunStore


def rows(step: int, names: list[tuple[str, str]], values: list[float]) -> Rows:
    return Rows(np.full(len(names), step), [n[0] for n in names], [n[1] for n in names], np.array(values, dtype=float))


LIGHT = [("", "loss"), ("fc", "act_std"), ("fc.weight", "grad_norm")]
FULL = [*LIGHT, ("fc.weight", "update_ratio")]


def test_a_failing_make_is_not_kept_and_a_full_cache_starts_again() -> None:
    cache: LayoutCache[int] = LayoutCache(size=2)
    calls: list[int] = []

    def make(r: Rows) -> int:
        calls.append(len(r))
        if len(calls) == 1:
            raise ValueError("first try fails")
        return len(r)

    with pytest.raises(ValueError, match="first try"):
        cache.get(rows(0, LIGHT, [1, 2, 3]), make)
    assert cache.get(rows(1, LIGHT, [1, 2, 3]), make) == 3  # tried again
    assert cache.get(rows(2, LIGHT, [4, 5, 6]), make) == 3 and len(calls) == 2  # a hit
    cache.get(rows(3, FULL, [1, 2, 3, 4]), make)
    cache.get(rows(4, [("", "loss")], [1]), make)  # a third layout: the cache is emptied, then keeps it
    cache.get(rows(5, LIGHT, [1, 2, 3]), make)
    assert len(calls) == 5


def test_store_and_memory_hold_the_same_rows_through_layout_changes(tmp_path) -> None:
    store, mem = RunStore(tmp_path), MemoryHistory()
    written = []
    for step in range(12):
        names = FULL if step % 4 == 0 else LIGHT
        if step == 7:  # a statistic never seen before, in an otherwise known layout
            names = [*LIGHT, ("fc", "dead_frac")]
        values = [float(step) + k / 10 for k in range(len(names))]
        if step == 5:
            values[1] = math.nan
        r = rows(step, names, values)
        store.write_rows(r)
        mem.write_rows(r)
        written += [(step, layer, stat, v) for (layer, stat), v in zip(names, values, strict=True)]
        if step == 6:
            store.flush()  # flushes between packets keep every row exactly once
    store.close()
    disk = load_run(tmp_path).history.sort_values(["step", "layer", "stat"]).reset_index(drop=True)
    want = sorted(written, key=lambda t: (t[0], t[1], t[2]))
    assert len(disk) == len(want)
    for got, (step, layer, stat, v) in zip(disk.itertuples(), want, strict=True):
        assert (got.step, got.layer, got.stat) == (step, layer, stat)
        assert (math.isnan(got.value) and math.isnan(v)) or got.value == v
    assert (
        sqlite3.connect(tmp_path / "nndiag.sqlite")
        .execute("SELECT COUNT(*) FROM scalars WHERE value IS NULL")
        .fetchone()[0]
        == 1
    )
    frame = mem.frame()
    assert len(frame) == len(want)
    assert set(zip(frame.layer, frame.stat, strict=True)) == {(layer, stat) for _, layer, stat, _ in written}


class Recorder:
    """A SummaryWriter without a file writer: every scalar arrives as an ``add_scalar`` call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.calls.append((tag, value, step))


def test_tensorboard_band_tags_are_not_added_to_the_cached_tags() -> None:
    writer = Recorder()
    sink = TensorBoardSink(writer)
    for step in range(3):
        sink.write_rows(rows(step, FULL, [1.0, 2.0, 3.0, 1e-3]))
    per_step = [[c for c in writer.calls if c[2] == step] for step in range(3)]
    assert [len(calls) for calls in per_step] == [len(per_step[0])] * 3  # no tags pile up step after step
    assert len(per_step[0]) == len(FULL) + 2  # the four statistics and the healthy band's two bounds
    assert [c[0] for c in per_step[2]] == [c[0] for c in per_step[0]]
