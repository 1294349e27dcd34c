"""TensorBoard output: tags, values and text, read back from the event files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import fit, loader, make_module, stat
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from nndiag import Diagnosis, DiagnosticsCallback, Monitor
from nndiag.demo.models import blobs, mlp
from nndiag.sinks.tensorboard import diagnoses_markdown, markdown_escape


def events(run_dir: str | Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_lightning_logger_receives_nndiag_scalars(pkg, tmp_path):
    torch.manual_seed(0)
    x, y = blobs(n=256, features=10, classes=3)
    cb = DiagnosticsCallback(schedule=1)
    trainer = fit(pkg, make_module(pkg, mlp(10, 3, hidden=16, depth=2)), loader(x, y), [cb], tmp_path)
    assert cb.log_dir == trainer.log_dir
    acc = events(trainer.log_dir)
    tags = set(acc.Tags()["scalars"])
    for tag in ("nndiag/loss", "nndiag/grad_norm_total", "nndiag/act_std/net.0", "nndiag/dead_frac/net.1",
                "nndiag/act_mean/input", "nndiag/update_ratio/net.0.weight", "nndiag/lr/optimizer"):  # fmt: skip
        assert tag in tags, tag
    h = cb.history
    tb = {e.step: e.value for e in acc.Scalars("nndiag/act_std/net.0")}
    mem = stat(h, "act_std", "net.0").set_index("step").value
    assert sorted(tb) == sorted(mem.index.tolist())
    for step, value in tb.items():
        assert value == pytest.approx(mem[step], rel=1e-6)
    assert len(acc.Scalars("nndiag/loss")) == trainer.global_step


def test_monitor_writes_its_own_event_file_with_histograms(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Monitor(model, opt, log_dir=tmp_path, schedule=1, histograms=True, histogram_bins=10) as mon:
        for _ in range(3):
            loss = model(torch.randn(32, 5)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    acc = events(mon.log_dir)
    assert "nndiag/sat_frac/1" in acc.Tags()["scalars"]
    hists = acc.Histograms("nndiag/act_hist/1")
    assert [h.step for h in hists] == [0, 1, 2]
    first = hists[0].histogram_value
    assert first.num == 32 * 8  # every tanh output counted once
    assert -1.0 <= first.min <= first.max <= 1.0


def test_histograms_off_by_default(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Monitor(model, opt, log_dir=tmp_path, schedule=1) as mon:
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        mon.step(torch.tensor(1.0))
    acc = events(mon.log_dir)
    assert acc.Tags()["histograms"] == []
    assert "nndiag/act_std/0" in acc.Tags()["scalars"]


def test_diagnoses_markdown_table_escapes_model_strings():
    d = Diagnosis(
        code="dead_units",
        severity="warning",
        step=4,
        layer="blocks|0<script>alert(1)</script>",
        message="Most units are dead\n| injected row |",
        evidence={"dead_frac": 0.9},
        suggestions=["Use **LeakyReLU**"],
    )
    md = diagnoses_markdown([d])
    lines = md.splitlines()
    assert len(lines) == 3  # header, separator, one row: no row injected by the message
    assert "<script>" not in md
    assert "&lt;script&gt;" in md
    assert lines[2].count(" | ") == 6  # seven cells, the layer's pipe escaped
    assert "dead\\_units" in lines[2] and "warning" in lines[2]
    assert markdown_escape("a|b") == "a\\|b"


def test_diagnoses_written_as_text(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from nndiag.sinks.tensorboard import TensorBoardSink

    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(writer, owns_writer=True)
    sink.write_diagnoses(7, [Diagnosis("nonfinite_loss", "error", 7, None, "Loss became NaN at step 7.")])
    sink.close()
    acc = events(tmp_path)
    texts = acc.Tensors("nndiag/diagnoses/text_summary")
    assert texts and texts[0].step == 7
    body = texts[0].tensor_proto.string_val[0].decode()
    assert "nonfinite\\_loss" in body and "NaN" in body
    assert not math.isnan(texts[0].wall_time)
