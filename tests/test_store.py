"""Run store: round trip, crash safety (kill -9), bad inputs to load_run."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from report_runs import KILL_SCRIPT
from torch import nn

from nndiag import CorruptRunError, Diagnosis, Monitor, RunNotFoundError, load_run
from nndiag.rows import Rows
from nndiag.store import STORE_FILENAME, RunStore


def test_round_trip_matches_memory_history(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, log_dir=tmp_path, schedule=2) as mon:
        for _ in range(7):
            loss = nn.functional.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 3, (8,)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    mem = mon.history.sort_values(["step", "layer", "stat"], ignore_index=True)
    run = load_run(mon.log_dir)
    disk = run.history.sort_values(["step", "layer", "stat"], ignore_index=True)
    assert len(mem) == len(disk) > 0
    assert (mem[["step", "layer", "stat"]] == disk[["step", "layer", "stat"]]).all().all()
    np.testing.assert_allclose(mem.value.to_numpy(), disk.value.to_numpy(), rtol=0, atol=0, equal_nan=True)
    assert run.meta["status"] == "finished"
    assert run.facts["forward_order"] == ["0", "1", "2"]
    assert run.facts["layers"]["0"]["fan_in"] == 6
    assert run.facts["batch_size"] == 8
    history, diagnoses = run  # unpacks as the contract
    assert history is run.history
    assert diagnoses == []
    assert sorted(disk[disk.stat == "loss"].step.tolist()) == list(range(7))
    assert sorted(disk[disk.stat == "act_std"].step.unique().tolist()) == [0, 2, 4, 6]


def test_nan_is_stored_as_missing_and_read_back_as_nan(tmp_path):
    store = RunStore(tmp_path)
    store.write_rows(Rows(np.array([0, 0]), ["fc", ""], ["update_ratio", "loss"], np.array([math.nan, 1.5])))
    store.close()
    h = load_run(tmp_path).history
    assert math.isnan(h[h.stat == "update_ratio"].value.iloc[0])
    assert h[h.stat == "loss"].value.iloc[0] == 1.5


def test_diagnoses_upsert_one_row_per_code_and_layer(tmp_path):
    store = RunStore(tmp_path)
    d1 = Diagnosis("dead_units", "warning", 3, "fc", "80% dead.", {"dead_frac": 0.8}, ["Lower the lr."])
    store.write_diagnoses([d1])
    d2 = Diagnosis("dead_units", "warning", 3, "fc", "90% dead.", {"dead_frac": 0.9}, ["Lower the lr."], 9, 4)
    store.write_diagnoses([d2, Diagnosis("nonfinite_loss", "error", 5, None, "NaN loss.")])
    store.close()
    _, diagnoses = load_run(tmp_path)
    assert [(d.code, d.layer) for d in diagnoses] == [("dead_units", "fc"), ("nonfinite_loss", None)]
    assert diagnoses[0].evidence == {"dead_frac": 0.9}
    assert diagnoses[0].last_step == 9
    assert diagnoses[0].count == 4


def test_store_continues_when_reopened(tmp_path):
    s1 = RunStore(tmp_path)
    s1.write_rows(Rows(np.array([0]), [""], ["loss"], np.array([2.0])))
    s1.close()
    s2 = RunStore(tmp_path)
    s2.write_rows(Rows(np.array([1]), [""], ["loss"], np.array([1.0])))
    s2.close()
    assert load_run(tmp_path).history.value.tolist() == [2.0, 1.0]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_kill_9_mid_run_keeps_everything_up_to_last_flush(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), proc.stderr.read()
        run_dir = line.split()[1]
        time.sleep(1.5)  # several flush intervals (0.2 s) of further training
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    run = load_run(run_dir)
    assert run.meta["status"] == "running"  # killed: never finished
    steps = sorted(run.history[run.history.stat == "loss"].step.tolist())
    assert len(steps) >= 30  # at least what was trained before READY plus flushed work after it
    assert steps == list(range(len(steps)))  # contiguous from 0: nothing lost before the last flush
    # every logging step that made it to disk is complete (all layers, all stats; full_every=1: all steps full)
    per_step = run.history[run.history.stat != "loss"].groupby("step").size()
    assert per_step.nunique() == 1
    assert run.facts["forward_order"] == ["0", "1", "2"]


def test_load_run_missing_directory(tmp_path):
    with pytest.raises(RunNotFoundError, match="does not exist"):
        load_run(tmp_path / "nope")


def test_load_run_directory_without_run(tmp_path):
    with pytest.raises(RunNotFoundError, match="holds no nndiag run"):
        load_run(tmp_path)


def test_load_run_parent_with_several_runs_lists_them(tmp_path):
    for name in ("version_0", "version_1"):
        RunStore(tmp_path / name).close()
    with pytest.raises(RunNotFoundError, match=r"holds 2 nndiag runs; pass one of them"):
        load_run(tmp_path)
    RunStore(tmp_path / "only" / "version_0").close()
    assert load_run(tmp_path / "only").path == tmp_path / "only" / "version_0" / STORE_FILENAME


def test_load_run_garbage_file(tmp_path):
    (tmp_path / STORE_FILENAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorruptRunError, match=r"not a readable nndiag run store|damaged"):
        load_run(tmp_path)


def test_load_run_foreign_sqlite(tmp_path):
    conn = sqlite3.connect(tmp_path / STORE_FILENAME)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptRunError, match="not an nndiag run store"):
        load_run(tmp_path)


def test_load_run_newer_schema_says_upgrade(tmp_path):
    store = RunStore(tmp_path)
    store.write_meta("schema_version", 999)
    store.close()
    with pytest.raises(CorruptRunError, match="upgrade nndiag"):
        load_run(tmp_path)


def test_load_run_truncated_store(tmp_path):
    store = RunStore(tmp_path)
    store.write_rows(Rows(np.arange(2000), [""] * 2000, ["loss"] * 2000, np.ones(2000)))
    store.close()
    path = tmp_path / STORE_FILENAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptRunError):
        load_run(tmp_path)


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from nndiag import Monitor
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt, log_dir=sys.argv[1], schedule=1, flush_seconds=60)  # no flush before exit
    for _ in range(5):
        loss = model(torch.randn(8, 4)).sum(); loss.backward(); opt.step(); opt.zero_grad(); mon.step(loss)
    print(mon.log_dir)
    # no mon.close(): nndiag must flush at interpreter exit
    """
)


def test_unclosed_monitor_is_flushed_at_exit(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    run = load_run(proc.stdout.strip())
    assert run.meta["status"] == "exited"
    assert sorted(run.history[run.history.stat == "loss"].step.tolist()) == [0, 1, 2, 3, 4]
