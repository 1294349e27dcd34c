"""Light logging steps (``RecorderConfig.full_every``): dense schedules measure less on most steps.

Past step 20 (the dense start and the default schedule's first sparse step) a logging step closer
than ``full_every`` steps to the last full one records the loss, learning rates, activations and
gradients, but no update ratios, weight norms, dead units or output statistics. What a full step reports stays exact.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from nndiag import Monitor
from nndiag.config import RecorderConfig
from nndiag.options import DiagnosticsOptions
from nndiag.schedule import is_full_step, resolve_schedule

FULL_ONLY = ("update_ratio", "weight_norm", "dead_frac", "output_std")
EVERY = ("loss", "act_std", "grad_norm", "grad_norm_total", "lr")


def _run(tmp_path: Any, steps: int, **options: Any) -> tuple[Any, dict[tuple[int, str], float]]:
    """Train a small ReLU MLP under ``schedule=1``; the history and ``||w_after - w_before|| / ||w_before||``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    truth: dict[tuple[int, str], float] = {}
    with Monitor(model, opt, log_dir=str(tmp_path), schedule=1, tensorboard=False, **options) as mon:
        for step in range(steps):
            x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            for n, p in model.named_parameters():
                truth[(step, n)] = float((p.detach() - before[n]).norm() / before[n].norm())
            mon.step(loss, target=y)
    return mon.history, truth


def _steps(history: Any, stat: str) -> list[int]:
    return sorted(set(history[history.stat == stat].step.astype(int)))


def test_dense_schedule_full_every_fourth_step_after_the_dense_start(tmp_path: Any) -> None:
    h, truth = _run(tmp_path, 36)
    full = [*range(21), 24, 28, 32]
    for stat in FULL_ONLY:
        assert _steps(h, stat) == full, stat
    for stat in EVERY:
        assert _steps(h, stat) == list(range(36)), stat
    # where an update ratio is reported it is the exact one, light steps between full ones included
    ratios = h[h.stat == "update_ratio"]
    assert len(ratios) == len(full) * 4
    for row in ratios.itertuples():
        assert row.value == pytest.approx(truth[(int(row.step), row.layer)], rel=1e-4)


def test_full_every_one_measures_everything_every_step(tmp_path: Any) -> None:
    h, truth = _run(tmp_path / "r", 28, full_every=1)
    for stat in FULL_ONLY + EVERY:
        assert _steps(h, stat) == list(range(28)), stat
    late = h[(h.stat == "update_ratio") & (h.step >= 20)]
    assert len(late) == 8 * 4
    for row in late.itertuples():
        assert row.value == pytest.approx(truth[(int(row.step), row.layer)], rel=1e-4)


def test_light_steps_do_not_report_stale_or_zero_values(tmp_path: Any) -> None:
    """A light step sends no update ratio of 0, no "all units dead" and no previous step's output."""
    h, _ = _run(tmp_path, 30)
    light = h[h.step.isin([21, 22, 23, 25])]
    assert not set(light.stat) & set(FULL_ONLY)
    dead = h[h.stat == "dead_frac"]
    assert not math.isclose(dead.value.max(), 1.0)


def test_default_schedule_is_unaffected() -> None:
    """The default schedule never logs closer than 10 steps after the dense start: every step is full."""
    should = resolve_schedule(None)
    last = None
    for step in range(2000):
        if should(step):
            assert is_full_step(step, last, RecorderConfig().full_every), step
            last = step


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_full_every_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ValueError, match="full_every must be a positive int"):
        RecorderConfig(full_every=bad)


def test_remedy_keeps_every_logging_step_full_unless_asked() -> None:
    """A rescue acts on early diagnoses (an lr spike shows in the update ratio): no light steps with it."""
    assert DiagnosticsOptions.build(1).config.full_every == 4
    assert DiagnosticsOptions.build(1, remedy=True).config.full_every == 1
    assert DiagnosticsOptions.build(1, remedy=True, full_every=3).config.full_every == 3
