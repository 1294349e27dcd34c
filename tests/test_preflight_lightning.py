"""Preflight with Lightning: the learning-rate range test (Tuner.lr_find) and the fit-start entry point."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from helpers import fit, lightning, loader, make_module
from torch import nn

import nndiag
from nndiag.demo.models import blobs
from nndiag.preflight import LRFindConfig, find_lr, preflight_at_fit_start


def small_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = blobs(256, 20, 4)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4)), x, y


def assert_usable(result, cfg: LRFindConfig) -> None:
    assert result.suggestion is not None and math.isfinite(result.suggestion)
    assert cfg.min_lr <= result.suggestion <= cfg.max_lr
    assert result.range is not None
    low, high = result.range
    assert cfg.min_lr <= low < high <= cfg.max_lr
    assert len(result.lrs) == len(result.losses) > 10


@pytest.mark.timeout(60)
def test_lr_find_on_a_plain_model_leaves_weights_and_cwd_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, x, y = small_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cfg = LRFindConfig(num_training=60)
    report = nndiag.preflight(model, (x, y), nn.CrossEntropyLoss(), overfit=False, lr_find=cfg)
    assert report.lr_find is not None
    assert_usable(report.lr_find, cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert list(tmp_path.iterdir()) == []  # Lightning's .lr_find_*.ckpt went to a temporary directory
    assert "learning rate:" in str(report)


@pytest.mark.timeout(60)
def test_lr_find_on_a_lightning_module(pkg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net, x, y = small_problem()
    module = make_module(pkg, net, optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cfg = LRFindConfig(num_training=40)
    result = find_lr(module, loader(x, y, batch_size=32, shuffle=True), config=cfg)
    assert_usable(result, cfg)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert list(tmp_path.iterdir()) == []


def test_lr_find_needs_a_loss_for_plain_models():
    model, x, y = small_problem()
    with pytest.raises(ValueError, match="loss_fn"):
        find_lr(model, (x, y))
    with pytest.raises(ValueError, match="min_lr < max_lr"):
        LRFindConfig(min_lr=1.0, max_lr=0.1)


def test_preflight_at_fit_start_sees_the_untrained_model_and_the_first_batch(pkg, tmp_path):
    L = lightning(pkg)
    net, x, y = small_problem()
    module = make_module(pkg, net)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    seen: list[object] = []

    class Preflight(L.Callback):
        def on_train_start(self, trainer, pl_module):
            weights_untouched = all(torch.equal(initial[k], v) for k, v in pl_module.state_dict().items())
            seen.append(weights_untouched)
            seen.append(preflight_at_fit_start(trainer, pl_module, loss_fn=nn.CrossEntropyLoss(), log=False))

    fit(pkg, module, loader(x, y), [Preflight()], tmp_path, max_steps=2)
    assert seen[0] is True
    report = seen[1]
    assert isinstance(report, nndiag.PreflightReport)
    assert report.samples == 32 and report.num_classes == 4
    assert report.table.kind.tolist() == ["Linear", "ReLU", "Linear"]
    assert report.overfit is not None and report.overfit.passed


def test_preflight_at_fit_start_skips_with_one_info_line(caplog):
    class NoForward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 2)

    trainer = type("T", (), {"train_dataloader": loader(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))})()
    with caplog.at_level(logging.INFO, logger="nndiag"):
        assert preflight_at_fit_start(trainer, NoForward()) is None
        assert preflight_at_fit_start(type("T", (), {"train_dataloader": None})(), NoForward()) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "nndiag"]
    assert len(lines) == 2 and all(line.startswith("nndiag preflight skipped:") for line in lines)
    assert "forward" in lines[0].lower()


def test_preflight_at_fit_start_logs_the_report(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.Sigmoid(), nn.Linear(32, 4))
    batch = (torch.randn(64, 20) * 100 + 50, torch.randint(0, 4, (64,)))
    with caplog.at_level(logging.INFO, logger="nndiag"):
        report = preflight_at_fit_start(object(), model, batch, overfit=False)
    assert report is not None and "input_not_normalized" in [d.code for d in report.diagnoses]
    logged = [r for r in caplog.records if r.name == "nndiag"]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    assert "input_not_normalized" in logged[0].getMessage()


def test_callback_preflight_option_runs_before_the_first_recorded_step(pkg, tmp_path, caplog):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
    nn.init.constant_(net[0].bias, -4.0)  # dead ReLU from the start: the preflight must already see it
    x, y = blobs(256, 20, 4)
    cb = nndiag.DiagnosticsCallback(schedule=1, preflight={"loss_fn": nn.CrossEntropyLoss(), "overfit": False})
    with caplog.at_level(logging.INFO, logger="nndiag"):
        fit(pkg, make_module(pkg, net), loader(x, y), [cb], tmp_path, max_steps=3)
    report = cb.preflight_report
    assert isinstance(report, nndiag.PreflightReport)
    assert "dead_units" in {d.code for d in report.diagnoses}
    assert any("nndiag preflight" in r.getMessage() for r in caplog.records)
    loss_steps = cb.history[cb.history.stat == "loss"].step.tolist()
    assert loss_steps == [0, 1, 2]  # the preflight's forward pass is not a recorded step


def test_callback_rejects_a_bad_preflight_option():
    with pytest.raises(TypeError, match="preflight must be"):
        nndiag.DiagnosticsCallback(preflight="yes")
