"""The examples run end to end and print what they promise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nndiag import load_run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lightning_example(tmp_path, capsys):
    log_dir = load_example("lightning_cnn").main(["--out", str(tmp_path), "--epochs", "1"])
    out = capsys.readouterr().out
    assert "optimizer steps into" in out and "first ReLU dead fraction" in out
    run = load_run(log_dir)
    assert run.facts["has_batchnorm"] is True
    assert run.facts["batch_size"] == 32
    assert run.history.step.max() + 1 == 16  # 512 samples / 32 per batch, one epoch


def test_plain_loop_example(tmp_path, capsys):
    log_dir = load_example("plain_loop").main(["--out", str(tmp_path), "--epochs", "1"])
    out = capsys.readouterr().out
    assert "16 optimizer steps recorded" in out  # 32 batches, accumulating 2 per step
    h = load_run(log_dir).history
    assert sorted(h[h.stat == "loss"].step.tolist()) == list(range(16))
    assert "sat_frac" in set(h.stat)  # the tanh MLP's saturation is recorded


def test_hf_trainer_example(tmp_path, capsys):
    pytest.importorskip("transformers")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: a second thread only contends for the machine's cores
    try:
        log_dir = load_example("hf_trainer").main(["--out", str(tmp_path), "--steps", "12"])
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "12 optimizer steps recorded" in out and "(the Trainer counted 12)" in out
    h = load_run(log_dir).history
    assert sorted(h[h.stat == "loss"].step.tolist()) == list(range(12))  # 24 micro-batches, 2 per step
    assert h[h.stat == "val_loss"].step.tolist() == [9, 11]  # evaluations after steps 10 and 12 (the end)
    assert "bert.encoder.layer.1.output.dense" in set(h[h.stat == "act_std"].layer)
