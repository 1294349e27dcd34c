"""``remedy=True`` under DDP (gloo, 2 processes on CPU): every rank acts alike, at the same steps.

``tests/dist/remedy_train.py`` trains a regression MLP on different batches per rank, under ``torchrun``
(``Monitor``) or Lightning's DDP launcher (``DiagnosticsCallback``). DDP does not re-synchronise the
weights after its start, so identical final weights mean every rank restored the same good state;
the process group has a 60 s timeout and every launch a wall-clock limit, so a rank waiting alone
fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).parent / "dist" / "remedy_train.py"
LIMIT = 180  # seconds per launch: far above the ~10-20 s a run takes on 2 cores
SYNC = 10  # RemedyConfig.sync_every in the script

pytestmark = [
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="torch.distributed with the gloo backend is not available",
    ),
    pytest.mark.timeout(2 * LIMIT),
]


def launch(out: Path, *args: str, launcher: str = "torch") -> list[dict[str, Any]]:
    env = {**os.environ, "NNDIAG_REPORT": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    env.pop("PYTEST_CURRENT_TEST", None)
    if launcher == "torch":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    else:
        cmd = [sys.executable, str(SCRIPT), "--devices", "2"]
    cmd += ["--launcher", launcher, "--out", str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LIMIT, cwd=out.parent)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def actions(report: dict[str, Any]) -> list[tuple[str, int, int | None]]:
    return [(r["action"], r["step"], r.get("good_step")) for r in report["remedies"]]


def agree(reports: list[dict[str, Any]]) -> None:
    """Both ranks took the same actions at the same steps and ended with the same weights."""
    zero, one = reports
    assert actions(zero) == actions(one), (actions(zero), actions(one))
    assert zero["steps"] == one["steps"]
    assert zero["weights"] == one["weights"], "the ranks restored different states"
    assert zero["warnings"] == [] and one["warnings"] == []
    for action, step, _ in actions(zero):
        if action in ("rollback", "halt"):
            assert step % SYNC == 0, f"{action} at step {step}: decisions are broadcast every {SYNC} steps"


@pytest.mark.parametrize("launcher", ["torch", "lightning"])
def test_ddp_spike_rolled_back_and_one_rank_nan_skipped_on_every_rank(tmp_path: Path, launcher: str) -> None:
    """lr x100 on every rank at step 100, a NaN sample on rank 1 only at step 40 (all-reduced into both)."""
    reports = launch(tmp_path / "out", "--spike-at", "100", "--nan-at", "40", "--nan-rank", "1", launcher=launcher)
    agree(reports)
    done = actions(reports[0])
    assert done[0] == ("skip", 40, None), done  # the rank without the NaN skipped the same step
    rollbacks = [a for a in done if a[0] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0][1] > 100 and rollbacks[0][2] <= 100, done
    for report in reports:
        assert report["finite"] and report["stop_reason"] is None and report["steps"] == 200
        assert report["final"] < 0.5, report["final"]  # the spike alone sends it to NaN/Inf
        assert report["remedies"][-1]["lr_factor"] == pytest.approx(0.1)


def test_ddp_accumulation_nan_micro_batch_and_halt_together(tmp_path: Path) -> None:
    """Accumulation (2 micro-batches, no_sync): a NaN micro-batch on rank 0 is a skip, not a divergence;
    an lr the user forces to 1e4 from step 80 on rolls back once, then both ranks halt at the same step."""
    args = ("--accumulate", "2", "--nan-at", "30", "--nan-rank", "0", "--always-from", "80", "--max-attempts", "1")
    reports = launch(tmp_path / "out", *args)
    agree(reports)
    done = actions(reports[0])
    assert done[0] == ("skip", 30, None) and done[1][0] == "skip" and done[1][1] >= 80, done  # no rollback for it
    assert [a[0] for a in done if a[0] != "skip"] == ["rollback", "halt"], done
    halt = done[-1][1]
    for report in reports:
        assert report["steps"] == halt < 200
        assert report["stop_reason"] is not None and "1 of 1 rollbacks used" in report["stop_reason"]
