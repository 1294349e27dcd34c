"""The gradient noise scale under DDP (gloo, 2 processes on CPU): per-rank gradients vs the all-reduced one.

``tests/dist/noise_scale_train.py`` trains at a learning rate of 0 under ``torchrun``; the mean of rank 0's
recorded estimates must match the brute-force ``|G|²`` and ``tr Σ`` (``tests/noise_reference.py``). With
accumulation on top, the small batch is one rank's micro-batch and the big one every rank's micro-batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from noise_reference import exact, model, problem
from test_noise_scale import close_to, series

from nndiag import quantities as Q
from nndiag.store.reader import load_run

SCRIPT = Path(__file__).parent / "dist" / "noise_scale_train.py"
LIMIT = 240  # seconds per launch: far above the ~15 s a run takes on 2 cores

pytestmark = [
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="torch.distributed with the gloo backend is not available",
    ),
    pytest.mark.timeout(2 * LIMIT),
]


@pytest.mark.parametrize("accumulate", [pytest.param(1, id="ddp"), pytest.param(2, id="ddp_accumulate2")])
def test_ddp_noise_scale_matches_brute_force(tmp_path: Path, accumulate: int) -> None:
    env = {**os.environ, "NNDIAG_REPORT": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    env.pop("PYTEST_CURRENT_TEST", None)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    cmd += ["--out", str(out), "--steps", "150", "--batch", "4", "--accumulate", str(accumulate)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LIMIT, cwd=tmp_path)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    report = json.loads((out / "rank0.json").read_text())
    assert json.loads((out / "rank1.json").read_text())["log_dir"] is None  # only rank 0 writes
    h = load_run(report["log_dir"]).history
    x, y = problem()
    g2, trace = exact(model(), x, y)
    assert set(series(h, Q.GNS_SMALL_BATCH)) == {4.0}
    assert set(series(h, Q.BATCH_SIZE)) == {8.0 * accumulate}
    assert len(series(h, Q.GNS_TRACE)) == 150
    assert close_to(series(h, Q.GNS_GRAD_SQ), g2)
    assert close_to(series(h, Q.GNS_TRACE), trace)
    assert len(series(h, Q.GRAD_NOISE_SCALE)) > 100
