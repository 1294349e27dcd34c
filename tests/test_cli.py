"""The nndiag command line: demo, show, and bad input without tracebacks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nndiag import Monitor
from nndiag.cli import EXIT_BAD_INPUT, EXIT_OK, main
from nndiag.store import STORE_FILENAME


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, log_dir=root, schedule=1) as mon:
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 2, (16,)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    return mon.log_dir


def test_show_prints_summary(recorded_run, capsys):
    assert main(["show", recorded_run]) == EXIT_OK
    out = capsys.readouterr().out
    assert "5 optimizer steps, 5 logging steps, 3 layers" in out
    assert "Activations (first -> last logging step):" in out
    row = next(line for line in out.splitlines() if line.startswith("1 "))  # the ReLU
    assert "->" in row
    assert "0 diagnoses" in out


def test_show_json_is_machine_readable(recorded_run, capsys):
    assert main(["show", recorded_run, "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "finished"
    assert doc["overview"]["optimizer_steps"] == 5
    assert set(doc["layers"]) >= {"input", "0", "1", "2", "0.weight"}
    assert doc["diagnoses"] == []


@pytest.mark.parametrize(
    "make_bad",
    [
        pytest.param(lambda p: p / "missing", id="missing_dir"),
        pytest.param(lambda p: p, id="not_a_run"),
        pytest.param(lambda p: (p / STORE_FILENAME).write_bytes(b"garbage" * 50) or p, id="corrupt_store"),
    ],
)
def test_bad_input_one_line_no_traceback(tmp_path, make_bad):
    target = make_bad(tmp_path)
    exe = shutil.which("nndiag") or ""
    cmd = [exe] if exe else [sys.executable, "-m", "nndiag.cli"]
    proc = subprocess.run([*cmd, "show", str(target)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("nndiag: ")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_demo_command_runs_and_points_at_the_fault(tmp_path):
    exe = shutil.which("nndiag")
    cmd = [exe] if exe else [sys.executable, "-m", "nndiag.cli"]
    env = {k: v for k, v in os.environ.items() if k != "NNDIAG_REPORT"}  # the demo writes its report
    proc = subprocess.run(
        [*cmd, "demo", "--out", str(tmp_path), "--epochs", "1"], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "fault injected" in out
    assert "Run store:" in out and "tensorboard --logdir" in out
    report = out.split("Report: ")[1].splitlines()[0]
    assert report.endswith("nndiag-report.html") and "dead_units" in Path(report).read_text()
    run_dir = out.split("Run store: ")[1].split("/nndiag.sqlite")[0]
    from nndiag import load_run

    h = load_run(run_dir).history
    dead = h[(h.stat == "dead_frac") & (h.layer == "net.1")].sort_values("step").value
    assert dead.iloc[0] > 0.5  # the injected fault is visible in the recording
    healthy = h[(h.stat == "dead_frac") & (h.layer == "net.3")].value
    assert healthy.iloc[0] < dead.iloc[0]
    # ... and the advisors name it, on the right layer
    assert re.search(r"\[warning\] dead_units \[net\.1\] at steps? 0\b", out), out
    assert "try first:" in out


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("nanruns")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, log_dir=root, schedule=1, diagnose=False) as mon:
        for step in range(12):
            x = torch.randn(16, 4)
            if step == 7:
                x[0, 0] = float("nan")  # a bad sample at step 7
            loss = nn.functional.cross_entropy(model(x), torch.randint(0, 2, (16,)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    return mon.log_dir


def test_diagnose_reruns_rules_on_a_stored_run(nan_run, capsys):
    assert main(["diagnose", nan_run]) == EXIT_OK
    out = capsys.readouterr().out
    assert re.search(r"nonfinite_input \[input\] at steps? 7\b", out), out
    assert re.search(r"nonfinite_loss at steps? 7\b", out), out
    assert "      - " in out  # fixes listed


def test_diagnose_json_and_fail_on(nan_run, recorded_run, capsys):
    assert main(["diagnose", nan_run, "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    codes = {d["code"] for d in doc["diagnoses"]}
    assert {"nonfinite_loss", "nonfinite_input"} <= codes
    assert main(["diagnose", nan_run, "--fail-on", "error"]) == 1
    assert main(["diagnose", recorded_run, "--fail-on", "error"]) == EXIT_OK  # healthy: no error


def test_diagnose_bad_config_is_one_line(nan_run, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[advisor]\ndead_fraction = 0.7\n")
    exe = shutil.which("nndiag")
    cmd = [exe] if exe else [sys.executable, "-m", "nndiag.cli"]
    proc = subprocess.run(
        [*cmd, "diagnose", nan_run, "--config", str(cfg)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in proc.stderr
    assert "unknown advisor threshold(s) dead_fraction" in proc.stderr
