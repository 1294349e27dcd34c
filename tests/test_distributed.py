"""Distributed runs on CPU (gloo, 2 processes): DDP through Lightning and torchrun, FSDP2 through torchrun.

Each test starts ``tests/dist/train.py`` in fresh processes (Lightning's DDP launcher or
``torch.distributed.run``) and compares rank 0's run store with a single process that sees the
same global batches. The process group has a short timeout and every run a wall-clock limit, so
a deadlock fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from nndiag.quantities import NOISE_SCALE_STATS, OUTPUT_STATS
from nndiag.store.reader import load_run

SCRIPT = Path(__file__).parent / "dist" / "train.py"
LIMIT = 240  # seconds per launch: far above the ~15 s a run takes on 2 cores

pytestmark = [
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="torch.distributed with the gloo backend is not available",
    ),
    pytest.mark.timeout(4 * LIMIT),
]


def launch(out: Path, *args: str, processes: int = 1, launcher: str = "lightning") -> dict[int, dict[str, Any]]:
    """Run the training script; return each rank's report. A non-zero exit fails with the output."""
    env = {**os.environ, "NNDIAG_REPORT": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    env.pop("PYTEST_CURRENT_TEST", None)
    if launcher == "lightning":
        cmd = [sys.executable, str(SCRIPT), "--launcher", "lightning", "--devices", str(processes)]
    elif processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        cmd += [str(SCRIPT), "--launcher", "torch"]
    else:
        cmd = [sys.executable, str(SCRIPT), "--launcher", "torch"]
    cmd += ["--out", str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LIMIT, cwd=out.parent)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    reports = {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}
    assert sorted(reports) == list(range(processes)), f"missing rank reports: {sorted(reports)}"
    return reports


def store_of(reports: dict[int, dict[str, Any]]) -> Any:
    return load_run(reports[0]["log_dir"])


def compare(single: pd.DataFrame, multi: pd.DataFrame) -> pd.DataFrame:
    """Row-by-row comparison; every (step, layer, stat) must exist in both.

    The model output statistics (``output_*``) are not combined across ranks yet (docs/distributed.md):
    a distributed run does not record them, so they are left out of the comparison. The gradient noise
    scale needs two batch sizes (ranks): only the distributed run has it (tests/test_noise_scale_dist.py).
    """
    assert not multi.stat.isin(OUTPUT_STATS).any()
    single = single[~single.stat.isin(OUTPUT_STATS)]
    multi = multi[~multi.stat.isin(NOISE_SCALE_STATS)]
    merged = single.merge(multi, on=["step", "layer", "stat"], how="outer", suffixes=("_one", "_many"))
    missing = merged[merged.value_one.isna() != merged.value_many.isna()]
    assert missing.empty, f"rows in one run only:\n{missing.head(20)}"
    merged["rel"] = (merged.value_one - merged.value_many).abs() / (merged.value_one.abs() + 1e-6)
    return merged


def diagnosis_keys(run: Any) -> set[tuple[str, str | None]]:
    return {(d.code, d.layer) for d in run.diagnoses}


def only_rank_0_wrote(out: Path, reports: dict[int, dict[str, Any]]) -> None:
    assert reports[0]["log_dir"] is not None
    assert all(r["log_dir"] is None for rank, r in reports.items() if rank > 0)
    stores = list((out / "runs").rglob("nndiag.sqlite"))
    assert len(stores) == 1, stores


@pytest.mark.parametrize(
    "pkg",
    [pytest.param("lightning.pytorch", id="lightning"), pytest.param("pytorch_lightning", id="pytorch_lightning")],
)
def test_lightning_ddp_matches_single_process(pkg: str, tmp_path: Path) -> None:
    """Two DDP ranks record what one process sees on the same global batches (dead ReLUs included)."""
    common = ("--pkg", pkg, "--dead", "--steps", "30", "--schedule", "1")
    one = launch(tmp_path / "one", *common)
    two = launch(tmp_path / "two", *common, processes=2)
    merged = compare(store_of(one).history, store_of(two).history)
    worst = merged.groupby("stat").rel.max()
    assert (worst < 1e-4).all(), f"statistics differ from the single process:\n{worst}"
    assert diagnosis_keys(store_of(two)) == diagnosis_keys(store_of(one))
    assert ("dead_units", "net.3") in diagnosis_keys(store_of(two)), "the fault is found"
    for history in (store_of(one).history, store_of(two).history):  # light logging steps past step 20
        full = set(history.step[history.stat == "update_ratio"])
        assert {20, 24, 28} <= full and not full & {21, 22, 23, 25}, sorted(full)
        assert set(history.step[history.stat == "dead_frac"]) == full, "no 'all dead' from a light step"
        assert set(history.step[history.stat == "act_std"]) == set(range(30))
    only_rank_0_wrote(tmp_path / "two", two)
    for report in two.values():
        assert report["steps"] == 30
        assert report["exchanges"] == 30, "one exchange per logging step"
        # one packed all-reduce per logging step, plus one at start (did every rank set up?)
        assert report["collectives"] == {"all_reduce": 31, "all_gather_object": 1}
        assert report["warnings"] == []


@pytest.mark.parametrize("parallel", [pytest.param("ddp", id="ddp"), pytest.param("fsdp2", id="fsdp2-sharded")])
def test_torchrun_matches_single_process(parallel: str, tmp_path: Path) -> None:
    """Plain loops under torchrun: DDP, and FSDP2 whose norms come from shards (sqrt of summed squares)."""
    common = ("--steps", "20", "--schedule", "1")
    one = launch(tmp_path / "one", *common, launcher="torch")
    two = launch(tmp_path / "two", *common, "--parallel", parallel, processes=2, launcher="torch")
    merged = compare(store_of(one).history, store_of(two).history)
    worst = merged.groupby("stat").rel.max()
    assert (worst < 1e-4).all(), f"statistics differ from the single process:\n{worst}"
    norms = merged[merged.stat.isin(["grad_norm", "weight_norm", "update_ratio"])]
    assert len(norms) > 100 and (norms.value_many > 0).all()
    only_rank_0_wrote(tmp_path / "two", two)
    assert all(r["collectives"] == {"all_reduce": 20, "all_gather_object": 1} for r in two.values())


@pytest.mark.parametrize(
    "inject",
    [
        pytest.param("activations", id="activation-statistics-fail"),
        pytest.param("step", id="step-statistics-fail"),
        pytest.param("encode", id="exchange-encoding-fails"),
        pytest.param("start", id="set-up-fails"),
    ],
)
def test_failure_on_rank_1_does_not_hang(inject: str, tmp_path: Path) -> None:
    """nndiag failing on rank 1 only: both ranks finish (no rank left waiting), rank 0 still records."""
    reports = launch(tmp_path / "run", "--inject", inject, "--steps", "30", "--timeout", "30", processes=2)
    assert [r["steps"] for r in reports.values()] == [30, 30]
    warned = reports[1]["warnings"]
    assert warned, "rank 1 says what failed"
    assert len({w for w in warned if "failed 20 times" not in w}) == len([w for w in warned if "failed 20" not in w])
    assert reports[0]["warnings"] == []
    history = store_of(reports).history
    assert set(history.step[history.stat == "loss"]) == set(range(30)), "every step's loss is kept"
    act = history[(history.stat == "act_std") & (history.layer == "net.0")]
    assert len(act) == 30 and act.value.notna().all(), "rank 0's statistics are still recorded"
    if inject == "start":
        assert reports[0]["broken"] is True and reports[0]["exchanges"] == 0, "nobody combines"
    else:
        assert reports[0]["exchanges"] == reports[1]["exchanges"] == 30


def test_failed_rank_is_not_counted(tmp_path: Path) -> None:
    """Rank 1's statistics fail: moments are rank 0's batch alone and averages are not diluted by its zeros."""
    broken = store_of(launch(tmp_path / "broken", "--inject", "step", "--steps", "3", processes=2)).history
    single = store_of(launch(tmp_path / "one", "--steps", "3")).history
    sys.path.insert(0, str(SCRIPT.parent))
    from train import data  # type: ignore[import-not-found]

    x, _ = data()
    mine = x[0:32:2]  # rank 0's share of the first global batch
    row = broken[(broken.step == 0) & (broken.layer == "input")].set_index("stat").value
    assert row["act_mean"] == pytest.approx(float(mine.mean()), rel=1e-5)
    assert row["act_std"] == pytest.approx(float(mine.std(correction=0)), rel=1e-5)
    # DDP gradients are the global batch's on every rank: the mean over the ranks that reported equals it
    grads = [
        frame[(frame.step == 0) & (frame.stat == "grad_norm")].set_index("layer").value for frame in (single, broken)
    ]
    assert grads[1].to_dict() == pytest.approx(grads[0].to_dict(), rel=1e-5)


def test_halt_on_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    """halt_on under DDP: rank 0's diagnosis stops both ranks at the same step (a lone stop would hang DDP)."""
    reports = launch(
        tmp_path / "run",
        *("--lr", "1000", "--steps", "300", "--schedule", "5", "--timeout", "30"),
        *("--halt-on", "nonfinite_loss,loss_diverging"),
        processes=2,
    )
    steps = {r["steps"] for r in reports.values()}
    assert len(steps) == 1 and steps.pop() < 300, reports
    assert "nndiag stopped training" in reports[0]["stop_reason"]
    assert "rank 0" in reports[1]["stop_reason"]


def test_module_called_on_one_rank_only(tmp_path: Path) -> None:
    """Data-dependent control flow: a module only rank 1 runs gets a slot after one renegotiation."""
    reports = launch(tmp_path / "run", "--branch", "--steps", "8", processes=2, launcher="torch")
    assert all(r["negotiations"] == 2 for r in reports.values())
    history = store_of(reports).history
    extra = sorted(set(history.step[(history.layer == "extra") & (history.stat == "act_std")]))
    assert extra == [4, 5, 6, 7], "recorded from the exchange after the one that revealed it"


def test_distributed_false_issues_no_collective(tmp_path: Path) -> None:
    """``distributed=False``: rank 0 records its own batch, nothing is exchanged."""
    reports = launch(tmp_path / "run", "--no-combine", "--steps", "6", processes=2)
    assert all(r["collectives"] == {"all_reduce": 0, "all_gather_object": 0} for r in reports.values())
    only_rank_0_wrote(tmp_path / "run", reports)
    history = store_of(reports).history
    assert set(history.step[history.stat == "act_std"]) == set(range(6))
