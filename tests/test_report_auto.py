"""The report written at the end of a run, and the TensorBoard dashboard written into it."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import fit, loader, make_module
from torch import nn

from nndiag import DiagnosticsCallback, Monitor
from nndiag.guard import NndiagInternalWarning
from nndiag.sinks.dashboard import BAND_TAGS


def _train_monitor(root, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, log_dir=root, schedule=1, **kw) as mon:
        for _ in range(6):
            loss = nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 2, (16,)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    return mon


def test_callback_writes_the_report_at_the_end_of_fit(pkg, tmp_path, caplog):
    torch.manual_seed(0)
    x, y = torch.randn(128, 8), torch.randint(0, 3, (128,))
    module = make_module(pkg, nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
    cb = DiagnosticsCallback(schedule=1, report=True)
    with caplog.at_level("INFO", logger="nndiag"):
        fit(pkg, module, loader(x, y), [cb], tmp_path)
    html = tmp_path.joinpath(cb.log_dir, "nndiag-report.html")
    assert html.is_file() and "nndiag report" in html.read_text()
    assert {p.suffix for p in html.parent.glob("nndiag-report.*")} == {".html", ".md", ".json"}
    assert any(f"nndiag: report {html}" in r.getMessage() for r in caplog.records)


def test_report_follows_the_environment_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("NNDIAG_REPORT", "0")
    assert not list((_train_monitor(tmp_path / "off").session.log_dir).glob("nndiag-report.*"))
    monkeypatch.delenv("NNDIAG_REPORT")
    assert (_train_monitor(tmp_path / "on").session.log_dir / "nndiag-report.html").is_file()
    monkeypatch.setenv("NNDIAG_REPORT", "0")
    assert (_train_monitor(tmp_path / "explicit", report=True).session.log_dir / "nndiag-report.md").is_file()


def test_report_off_or_memory_only_writes_nothing(tmp_path):
    mon = _train_monitor(tmp_path, report=False)
    assert not list(mon.session.log_dir.glob("nndiag-report.*"))
    _train_monitor(None, report=True)  # no log dir: nothing to report from, and no error


def test_a_failing_report_warns_once_and_keeps_the_run(tmp_path, monkeypatch):
    import nndiag.report.write as write

    def broken(*a, **k):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(write, "write_report", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = _train_monitor(tmp_path, report=True)
    internal = [w for w in caught if issubclass(w.category, NndiagInternalWarning)]
    assert len(internal) == 1 and "renderer exploded" in str(internal[0].message)
    assert mon.steps == 6 and (mon.session.log_dir / "nndiag.sqlite").is_file()


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_dashboard_layout_and_target_band_are_in_the_run(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2

    mon = _train_monitor(tmp_path, report=False)
    acc = _events(mon.session.log_dir)
    tensors = acc.Tensors("custom_scalars__config__")
    assert tensors, "no custom-scalar layout written"
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensors[-1].tensor_proto.string_val[0])
    titles = [c.title for c in layout.category]
    assert titles == ["nndiag: loss & learning rate", "nndiag: update ratio (target 1e-3)", "nndiag: activations"]
    charts = {ch.title: ch for ch in layout.category[1].chart}
    margin = charts["0.weight"].margin.series[0]
    assert (margin.value, margin.lower, margin.upper) == ("nndiag/update_ratio/0.weight", *BAND_TAGS)
    per_layer = {ch.title for ch in layout.category[2].chart}
    assert {"0", "1", "2"} <= per_layer
    low = acc.Scalars(BAND_TAGS[0])
    ratio = acc.Scalars("nndiag/update_ratio/0.weight")
    assert [e.step for e in low] == [e.step for e in ratio]
    assert low[0].value == pytest.approx(1e-4)


def test_dashboards_folder_holds_the_current_layout():
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "dashboards"
    spec = importlib.util.spec_from_file_location("export_layout", root / "export_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads((root / "nndiag_layout.json").read_text()) == module.layout_for(None)
