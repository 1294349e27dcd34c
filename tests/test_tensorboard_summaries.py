"""The TensorBoard sink's kept ``Summary`` messages: what is written is what a fresh message would write."""

from __future__ import annotations

import math

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

from nndiag.rows import Rows
from nndiag.sinks.tensorboard import SUMMARIES_KEPT, TensorBoardSink


def _rows(steps: list[int], layers: list[str], stats: list[str], values: list[float]) -> Rows:
    return Rows(np.asarray(steps, dtype=np.int64), layers, stats, np.asarray(values, dtype=np.float64))


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_repeated_layouts_write_each_steps_own_values(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(writer)
    layers, stats = ["fc", "fc", ""], ["act_std", "act_mean", "loss"]
    for step in range(5):  # one layout, five steps: a kept message must not keep step 0's values
        loss = 0.0 if step == 2 else 2.0 / (1 + step)
        sink.write_rows(_rows([step] * 3, layers, stats, [1.0 + step, -0.5 * step, loss]))
    # a packet carrying earlier steps' losses (two steps in one packet), then an empty one
    sink.write_rows(_rows([5, 6, 6], ["", "", "fc"], ["loss", "loss", "act_std"], [0.25, float("nan"), 7.0]))
    sink.write_rows(_rows([], [], [], []))
    writer.close()
    got = _scalars(tmp_path)
    assert got["nndiag/act_std/fc"] == [(s, 1.0 + s) for s in range(5)] + [(6, 7.0)]
    assert got["nndiag/act_mean/fc"] == [(s, -0.5 * s) for s in range(5)]
    loss = got["nndiag/loss"]
    assert [s for s, _ in loss] == [0, 1, 2, 3, 4, 5, 6]
    assert loss[2] == (2, 0.0)  # a zero is written (a set oneof), not dropped as a proto3 default
    assert loss[5] == (5, 0.25) and math.isnan(loss[6][1])


def test_kept_message_serialises_like_a_fresh_one(tmp_path):
    sink = TensorBoardSink(SummaryWriter(str(tmp_path)))
    tags = ["nndiag/a", "nndiag/b", "nndiag/c"]
    for values in ([1.0, 2.0, 3.0], [0.0, float("-inf"), 1e-30], [float("nan"), -0.0, 3.5]):
        fresh = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in zip(tags, values, strict=True)])
        kept = sink._summary(tags, values)
        assert kept.SerializeToString() == fresh.SerializeToString()
    assert len(sink._summaries) == 1


def test_kept_messages_are_bounded(tmp_path):
    sink = TensorBoardSink(SummaryWriter(str(tmp_path)))
    for i in range(SUMMARIES_KEPT + 5):
        sink._summary([f"nndiag/t{i}"], [float(i)])
    assert len(sink._summaries) <= SUMMARIES_KEPT
    assert sink._summary(["nndiag/t0"], [9.0]).value[0].simple_value == 9.0
