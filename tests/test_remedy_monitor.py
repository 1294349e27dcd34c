"""``remedy=True`` in plain loops: roll back and cool down on an lr spike, skip a NaN batch, halt after N attempts.

Tiny regression MLP, a few hundred steps, ``Monitor(remedy=...)``; each test compares with the same
run undisturbed (or without the remedy).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from nndiag import Monitor, RemedyConfig
from nndiag.remedy import remedy_config

STEPS = 240
FAST = RemedyConfig(keep_every=25, confirm_steps=5)


def run(
    remedy: Any = None,
    before: Callable[[int, torch.optim.Optimizer, torch.Tensor], None] | None = None,
    steps: int = STEPS,
    resume: dict[str, Any] | None = None,
    accumulate: int = 1,
    bf16: bool = False,
    in_step: bool = False,
) -> dict[str, Any]:
    """Train; return the held-out loss, the monitor's records and whether the weights stayed finite.

    ``accumulate``: each batch of 32 is ``accumulate`` micro-batches, ``mon.step(loss)`` after each.
    ``in_step``: wait after each step until the writer has handled it (its checks included), so that
    the advisors are never behind this millisecond-step loop: the remedy then acts at the same steps
    on every run, whatever the machine's load.
    """
    torch.manual_seed(0)
    w = torch.randn(8, 1)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    with Monitor(model, opt, log_dir=None, schedule=1, remedy=remedy, resume=resume) as mon:
        for step in range(steps):
            x = torch.randn(32, 8, generator=gen)
            y = x @ w + 0.1 * torch.randn(32, 1, generator=gen)
            if before is not None:
                before(step, opt, x)
            opt.zero_grad()
            for m in range(accumulate):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(x[m::accumulate]).float()
                loss = nn.functional.mse_loss(out, y[m::accumulate])
                (loss / accumulate).backward()
                if m < accumulate - 1:
                    mon.step(loss)  # a micro-batch: no optimizer step yet
            opt.step()
            mon.step(loss)
            if in_step:
                assert mon.session.pipeline.drain(), "the writer did not catch up within 60 s"
            if mon.should_stop:
                break
        state = mon.state_dict()
    with torch.no_grad():
        xe = torch.randn(512, 8, generator=gen)
        final = float(nn.functional.mse_loss(model(xe), xe @ w))
    return {
        "final": final,
        "remedies": mon.remedies,
        "diagnoses": mon.diagnoses,
        "stop_reason": mon.stop_reason,
        "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
        "state": state,
        "steps": mon.steps,
    }


def lr_spike(at: int, factor: float = 100.0) -> Callable[[int, torch.optim.Optimizer, torch.Tensor], None]:
    def before(step: int, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
        if step == at:
            for g in opt.param_groups:
                g["lr"] *= factor

    return before


def nan_batch(at: int) -> Callable[[int, torch.optim.Optimizer, torch.Tensor], None]:
    def before(step: int, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
        if step == at:
            x[0, 0] = float("nan")

    return before


@pytest.fixture(scope="module")
def undisturbed() -> float:
    return run()["final"]


def test_lr_spike_is_rolled_back_and_cooled_down(undisturbed: float) -> None:
    broken = run(before=lr_spike(100))
    assert not math.isfinite(broken["final"])  # without the remedy the spike ruins the run
    out = run(FAST, before=lr_spike(100))
    rollbacks = [r for r in out["remedies"] if r.action == "rollback"]
    assert rollbacks, out["remedies"]
    first = rollbacks[0]
    assert first.step > 100 and first.good_step is not None and first.good_step <= 101
    assert first.lr_factor == pytest.approx(0.1)
    assert out["finite"] and out["stop_reason"] is None
    assert out["final"] < 3 * undisturbed, (out["final"], undisturbed)
    remedied = [d for d in out["diagnoses"] if d.code == "remedied"]
    assert len(remedied) == 1 and remedied[0].severity == "info"
    assert f"step {first.step}" in remedied[0].message and "learning rate cut" in remedied[0].message


def test_nan_batch_is_skipped_and_the_weights_stay_finite(undisturbed: float) -> None:
    out = run(True, before=nan_batch(150))
    assert [(r.action, r.step) for r in out["remedies"]] == [("skip", 150)]
    assert out["finite"] and out["final"] < 1.5 * undisturbed
    codes = {d.code for d in out["diagnoses"]}
    assert "nonfinite_loss" not in codes  # the skipped batch's loss is not the run's
    assert "remedied" in codes


def test_accumulation_nan_micro_batch_skipped_and_spike_rolled_back(undisturbed: float) -> None:
    """4 micro-batches per step: the NaN sample is in the first, whose loss nndiag got before the step."""
    out = run(True, before=nan_batch(150), accumulate=4)
    assert [(r.action, r.step) for r in out["remedies"]] == [("skip", 150)]  # not a divergence
    assert out["finite"] and out["final"] < 1.5 * undisturbed
    assert "nonfinite_loss" not in {d.code for d in out["diagnoses"]}
    out = run(FAST, before=lr_spike(100), accumulate=4)
    rollbacks = [r for r in out["remedies"] if r.action == "rollback"]
    assert rollbacks and rollbacks[0].step > 100 and rollbacks[0].good_step <= 101, out["remedies"]
    assert out["finite"] and out["stop_reason"] is None and out["final"] < 3 * undisturbed


def test_bf16_autocast_nan_batch_skipped_and_spike_rolled_back(undisturbed: float) -> None:
    """CPU bf16 autocast (no GradScaler: bf16 needs none). fp16's GradScaler skips overflowing steps itself,
    before the remedy's step hook sees them (docs/remedy.md, limits)."""
    out = run(True, before=nan_batch(150), bf16=True)
    assert [(r.action, r.step) for r in out["remedies"]] == [("skip", 150)]
    assert out["finite"] and out["final"] < 1.5 * undisturbed
    out = run(FAST, before=lr_spike(100), bf16=True)
    rollbacks = [r for r in out["remedies"] if r.action == "rollback"]
    assert rollbacks and rollbacks[0].step > 100 and rollbacks[0].good_step <= 101, out["remedies"]
    assert out["finite"] and out["stop_reason"] is None and out["final"] < 3 * undisturbed


def test_a_run_that_diverges_after_every_attempt_halts_with_the_reason() -> None:
    def always_too_high(step: int, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
        if step >= 80:
            for g in opt.param_groups:
                g["lr"] = 1e4  # the user's code insists: every rollback's cut is undone

    out = run(RemedyConfig(keep_every=25, confirm_steps=5, max_attempts=2), before=always_too_high)
    actions = [r.action for r in out["remedies"] if r.action != "skip"]
    assert actions == ["rollback", "rollback", "halt"], out["remedies"]
    assert out["stop_reason"] is not None and "gave up" in out["stop_reason"]
    assert "2 of 2 rollbacks used" in out["stop_reason"]
    assert out["steps"] < STEPS


def test_attempts_restart_after_a_long_healthy_stretch(monkeypatch: pytest.MonkeyPatch) -> None:
    """One attempt allowed; two spikes far apart: each is a fresh divergence, rolled back, no halt.

    The restart needs a good state confirmed after the first rollback, i.e. advisor checks after it: in a
    run of a second the CPU budget of the checks (``COST_FACTOR``) would allow none, so it is lifted here.
    """
    monkeypatch.setattr("nndiag.advice.COST_FACTOR", 0.0)  # a check every 20 logging steps

    def two_spikes(step: int, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
        if step in (30, 170):
            for g in opt.param_groups:
                g["lr"] *= 100

    cfg = RemedyConfig(keep_every=10, confirm_steps=5, max_attempts=1)  # restart after 100 healthy steps
    out = run(cfg, before=two_spikes, in_step=True)
    rollbacks = [r for r in out["remedies"] if r.action == "rollback"]
    assert [r.attempt for r in rollbacks] == [1, 1], out["remedies"]
    assert rollbacks[0].step < 170 < rollbacks[1].step
    assert out["stop_reason"] is None and out["finite"]


def test_resume_keeps_the_remedy_state() -> None:
    first = run(FAST, before=lr_spike(100), steps=160)
    saved = first["state"]["remedy"]
    assert saved["attempts"] >= 1 and saved["lr_factor"] < 1
    again = run(FAST, steps=5, resume=first["state"])
    state = again["state"]["remedy"]
    assert state["attempts"] == saved["attempts"] and state["lr_factor"] == pytest.approx(saved["lr_factor"])
    assert [r["step"] for r in state["remedies"]] == [r["step"] for r in saved["remedies"]]


def test_the_cut_persists_on_top_of_a_scheduler() -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    used: list[float] = []
    with Monitor(model, opt, log_dir=None, remedy=True) as mon:
        opt.register_step_pre_hook(lambda o, a, k: used.append(float(o.param_groups[0]["lr"])))  # after nndiag's
        assert mon.remedy is not None
        mon.remedy.hooks.factor = 0.1  # as after one rollback
        for _ in range(3):
            model(torch.randn(4, 2)).sum().backward()
            opt.step()
            sched.step()
            mon.step()
    assert used == pytest.approx([0.1, 0.05, 0.1 / 3])  # the schedule's value times the cut
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)  # the scheduler's own value is untouched


def test_off_by_default_and_validated() -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, log_dir=None) as mon:
        assert mon.remedy is None and mon.remedies == []
    assert remedy_config({"on": ["nonfinite_loss"]}).on == ("nonfinite_loss",)
    with pytest.raises(ValueError, match="unknown diagnosis code"):
        RemedyConfig(on=("nan_loss",))
    with pytest.raises(TypeError, match="unknown remedy option"):
        Monitor(model, opt, log_dir=None, remedy={"factor": 0.5})
    with pytest.raises(ValueError, match="remedy needs the advisors"):
        Monitor(model, opt, log_dir=None, remedy=True, diagnose=False)
