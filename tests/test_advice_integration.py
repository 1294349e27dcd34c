"""Advisors wired into training: diagnoses in cb.diagnoses, store, TensorBoard, log; halt_on; options."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from helpers import fit, loader, make_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from nndiag import AdvisorConfig, DiagnosticsCallback, Monitor, load_run
from nndiag.demo.models import blobs, mlp


class NanAfter(nn.Module):
    """Identity until ``step`` forward calls, then NaN (a fault injected mid-run)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * float("nan") if self.calls > self.step else x


def nan_net(step: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), NanAfter(step), nn.Linear(16, 3))


def test_lightning_halt_on_stops_training_with_reason(pkg, tmp_path, caplog):
    x, y = blobs(n=640, features=10, classes=3)
    cb = DiagnosticsCallback(schedule=1, halt_on=("nonfinite_loss",))
    with caplog.at_level(logging.INFO, logger="nndiag"):
        trainer = fit(pkg, make_module(pkg, nan_net(5)), loader(x, y, 32), [cb], tmp_path, max_epochs=3)
    assert trainer.global_step < 60  # 3 epochs would be 60 steps: stopped early
    assert cb.stop_reason is not None
    assert "nonfinite_loss" in cb.stop_reason
    codes = {d.code for d in cb.diagnoses}
    assert "nonfinite_loss" in codes
    nan = next(d for d in cb.diagnoses if d.code == "nonfinite_loss")
    assert nan.step == 5
    assert nan.severity == "error"
    assert any("nndiag stopped training" in r.message for r in caplog.records)
    assert any("nndiag error: nonfinite_loss" in r.message for r in caplog.records)  # logged once when detected
    assert sum("nndiag error: nonfinite_loss" in r.message for r in caplog.records) == 1
    # persisted and shown in TensorBoard
    _, stored = load_run(cb.log_dir)
    assert {d.code for d in stored} == codes
    acc = EventAccumulator(str(cb.log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("nndiag/diagnoses/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "nonfinite\\_loss" in text


def test_monitor_should_stop_and_summary(tmp_path, caplog):
    model = nan_net(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = blobs(n=512, features=10, classes=3)
    steps = 0
    with (
        caplog.at_level(logging.INFO, logger="nndiag"),
        Monitor(model, opt, log_dir=tmp_path, schedule=1, halt_on="nonfinite_loss") as mon,
    ):
        for _epoch in range(20):
            for i in range(0, 512, 32):
                loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                loss.backward()
                opt.step()
                opt.zero_grad()
                mon.step(loss)
                steps += 1
                if mon.should_stop:
                    break
            if mon.should_stop:
                break
    assert mon.should_stop
    assert steps < 320
    assert "nonfinite_loss" in (mon.stop_reason or "")
    summary = [r.message for r in caplog.records if " optimizer steps:" in r.message]
    assert summary, [r.message for r in caplog.records]
    assert "ERROR" in summary[-1] and "nonfinite_loss" in summary[-1] and "try first:" in summary[-1]


def test_healthy_run_summary_says_no_problems(caplog):
    torch.manual_seed(0)
    model = mlp(10, 3, hidden=32, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = blobs(n=512, features=10, classes=3)
    with caplog.at_level(logging.INFO, logger="nndiag"), Monitor(model, opt, log_dir=None) as mon:
        for _ in range(4):
            for i in range(0, 512, 32):
                loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                loss.backward()
                opt.step()
                opt.zero_grad()
                mon.step(loss)
    bad = [d for d in mon.diagnoses if d.severity != "info"]
    assert bad == [], [d.message for d in bad]
    assert any("no problems found in 64 optimizer steps" in r.message for r in caplog.records)


def test_diagnose_false_records_without_advisors():
    model = nan_net(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, log_dir=None, schedule=1, diagnose=False) as mon:
        for _ in range(4):
            loss = nn.functional.cross_entropy(model(torch.randn(8, 10)), torch.randint(0, 3, (8,)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    assert mon.diagnoses == []
    assert math.isnan(mon.history.query("stat == 'loss'").value.iloc[-1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"halt_on": ("nan_loss",)}, "unknown diagnosis code", id="unknown_halt_code"),
        pytest.param(
            {"halt_on": "nonfinite_loss", "diagnose": False}, "needs the advisors", id="halt_without_advisors"
        ),
        pytest.param({"num_classes": 1}, "num_classes must be an int >= 2", id="one_class"),
        pytest.param({"advisor_config": {"dead_fraction": 0.7}}, "unknown advisor threshold", id="bad_threshold_name"),
        pytest.param({"advisor_config": {"dead_frac": -1}}, "must be a positive number", id="negative_threshold"),
        pytest.param({"advisor_config": 3}, "advisor_config must be", id="bad_config_type"),
    ],
)
def test_bad_advisor_options_fail_at_construction(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DiagnosticsCallback(**kwargs)
    model = nn.Linear(2, 2)
    with pytest.raises((ValueError, TypeError), match=match):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), log_dir=None, **kwargs)
    assert not model._forward_hooks  # nothing attached by a rejected Monitor


def test_advisor_config_from_toml_file(tmp_path):
    path = tmp_path / "thresholds.toml"
    path.write_text("[advisor]\ndead_frac = 0.8\nsat_frac = 0.6\n")
    cb = DiagnosticsCallback(advisor_config=str(path))
    assert cb._advice_args[1] == str(path)
    cfg = AdvisorConfig.from_file(path)
    assert (cfg.dead_frac, cfg.sat_frac) == (0.8, 0.6)


def test_every_code_has_a_cause_rank_and_causes_come_first():
    from nndiag.advisor import CAUSE_ORDER, by_severity
    from nndiag.diagnosis import DIAGNOSIS_CODES, Diagnosis

    assert sorted(CAUSE_ORDER) == sorted(DIAGNOSIS_CODES)
    symptom = Diagnosis("initial_loss_off", "warning", 0, None, "Initial loss 22.8 vs ln 4.")
    cause = Diagnosis("poor_init_scale", "warning", 3, "0.weight", "Weight std 8x Xavier.")
    error = Diagnosis("nonfinite_loss", "error", 9, None, "NaN loss.")
    resolved = Diagnosis("nonfinite_input", "error", 1, "input", "NaN input.", resolved=True)
    assert [d.code for d in by_severity([symptom, resolved, cause, error])] == [
        "nonfinite_loss",  # errors first
        "poor_init_scale",  # then, among warnings, the cause before its symptom (despite its later step)
        "initial_loss_off",
        "nonfinite_input",  # resolved last
    ]
