"""Loss-curve and learning-rate advisors: synthetic histories (table-driven) and real short runs.

Every rule has cases that must fire (code, layer, approximate onset step) and healthy cases that
must stay silent. Silent cases are checked at every 10th step of the run (the Advisor runs
periodically during training, so a rule that fires on a prefix is a false alarm too).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import nndiag
from nndiag.advisor import Advisor
from nndiag.demo.models import blobs, mlp
from nndiag.diagnosis import Diagnosis
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.loss import (
    initial_loss_off,
    loss_diverging,
    loss_not_decreasing,
    loss_oscillating,
    overfitting,
    underfitting,
)
from nndiag.rules.lr import lr_too_high, lr_too_low
from nndiag.rules.registry import RULES
from nndiag.rules.view import RunView
from nndiag.schedule import default_schedule

CFG = AdvisorConfig()
WEIGHTS = ("net.0.weight", "net.2.weight", "net.4.weight")
BIASES = ("net.0.bias", "net.2.bias", "net.4.bias")
LN4 = math.log(4)

Series = float | list[float] | np.ndarray | Callable[[int], float] | None


# -- history builder ---------------------------------------------------------------------------


def _at(value: Series, step: int) -> float | None:
    if value is None:
        return None
    if callable(value):
        return float(value(step))
    if isinstance(value, (list, np.ndarray)):
        return float(value[step]) if step < len(value) else None
    return float(value)


def run(
    loss: list[float] | np.ndarray,
    *,
    ratio: Series = 1e-3,
    layer_ratio: dict[str, Series] | None = None,
    grad_ratio: Series = 0.1,
    lr: Series = 0.05,
    dead: Series = None,
    val: dict[int, float] | None = None,
    out_width: int = 4,
    out_std: float = 0.3,
    num_classes: int | None = None,
    frozen: tuple[str, ...] = (),
    schedule: Callable[[int], bool] = default_schedule,
) -> RunView:
    """A RunView of a 3-layer ReLU MLP (net.0/2/4 linear, net.1/3 ReLU) with the given statistics.

    ``loss`` is recorded at every step; the per-parameter statistics at the logging steps of
    ``schedule``: ``update_ratio`` of the weight matrices (``layer_ratio`` overrides one tensor;
    biases get NaN at step 0, as zero-initialised biases do, and a large ratio after),
    ``grad_norm``/``weight_norm`` (ratio ``grad_ratio``), ``lr``, ``dead_frac`` of net.3, and
    ``act_std`` of the output layer at step 0. ``val`` maps steps to validation losses.
    """
    rows: list[tuple[int, str, str, float]] = [(s, "", "loss", float(v)) for s, v in enumerate(loss)]
    layer_ratio = layer_ratio or {}
    for s in range(len(loss)):
        if not schedule(s):
            continue
        for name in WEIGHTS:
            r = _at(layer_ratio.get(name, ratio), s)
            if r is not None:
                rows.append((s, name, "update_ratio", r))
            g = _at(grad_ratio, s)
            rows += [(s, name, "weight_norm", 4.0)] + ([(s, name, "grad_norm", 4.0 * g)] if g is not None else [])
        for name in BIASES:
            rows.append((s, name, "update_ratio", math.nan if s == 0 else 0.5))
        lr_s = _at(lr, s)
        if lr_s is not None:
            rows.append((s, "optimizer", "lr", lr_s))
        d = _at(dead, s)
        if d is not None:
            rows.append((s, "net.3", "dead_frac", d))
            rows.append((s, "net.1", "dead_frac", 0.05))
    rows.append((0, "net.4", "act_std", out_std))
    for s, v in (val or {}).items():
        rows.append((s, "", "val_loss", float(v)))
    history = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    kinds = {"net.0": "linear", "net.1": "activation", "net.2": "linear", "net.3": "activation", "net.4": "linear"}
    layers = {
        name: {"kind": kind, "out_shape": [32, out_width if name == "net.4" else 64], "forward_order": i}
        for i, (name, kind) in enumerate(kinds.items())
    }
    params = {
        name: {
            "shape": [64, 64] if name.endswith("weight") else [64],
            "layer": name.rsplit(".", 1)[0],
            "trainable": name not in frozen,
            "in_optimizer": name not in frozen,
        }
        for name in WEIGHTS + BIASES
    }
    facts: dict[str, Any] = {"forward_order": list(kinds), "layers": layers, "params": params, "batch_size": 32}
    if num_classes is not None:
        facts["num_classes"] = num_classes
    return RunView(history, facts)


def prefix(view: RunView, step: int) -> RunView:
    """The view as the Advisor saw it at ``step``."""
    return RunView(view.history[view.history.step <= step], view.facts)


def noisy(curve: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """``curve`` times mean-one lognormal noise (per-batch noise of a mini-batch loss)."""
    rng = np.random.default_rng(seed)
    return curve * np.exp(sigma * rng.standard_normal(len(curve)) - sigma**2 / 2)


def decay(n: int, start: float = LN4, floor: float = 0.0, tau: float = 40.0, flat: int = 0) -> np.ndarray:
    """Exponential decay from ``start`` to ``floor`` (after ``flat`` steps at ``start``)."""
    t = np.maximum(np.arange(n, dtype=float) - flat, 0.0)
    return floor + (start - floor) * np.exp(-t / tau)


def climb(curve: np.ndarray, at: int, factor: float, over: int) -> np.ndarray:
    """``curve`` multiplied by a growth to ``factor`` over ``over`` steps from step ``at`` on (then staying up)."""
    t = np.arange(len(curve), dtype=float)
    return curve * np.exp(np.log(factor) * np.clip((t - at) / over, 0.0, 1.0))


# -- healthy histories every rule must stay silent on --------------------------------------------


def _healthy() -> dict[str, RunView]:
    n = 300
    return {
        "converging_sgd": run(noisy(decay(n, floor=0.1, tau=60), 0.05), ratio=2e-3),
        "adam_ratio_1e-2": run(noisy(decay(n, floor=0.05, tau=50), 0.05), ratio=1e-2, lr=1e-3),
        "converging_to_zero_with_spikes": run(
            np.where(np.arange(n) % 37 == 36, 1.0, noisy(decay(n, floor=1e-4, tau=15), 0.5)), ratio=2e-3
        ),
        "noisy_small_batch_decreasing": run(noisy(decay(n, floor=0.2, tau=120), 0.45, seed=1), ratio=3e-3),
        "short_warmup_bump": run(
            noisy(decay(n, tau=60) * (1 + 0.6 * np.sin(np.pi * np.clip(np.arange(n) / 30, 0, 1))), 0.05),
            ratio=lambda s: 2e-3 * min(1.0, (s + 1) / 30),
            lr=lambda s: 0.05 * min(1.0, (s + 1) / 30),
        ),
        "regression_one_output": run(noisy(decay(n, start=40.0, floor=0.5, tau=50), 0.3), out_width=1, out_std=0.2),
        "flat_start_then_learns": run(noisy(decay(n, tau=40, flat=30), 0.01), ratio=2e-3),
        "fast_sgd_high_ratio_but_stable": run(
            noisy(decay(n, floor=1e-3, tau=5), 0.1), ratio=lambda s: 0.2 if s < 10 else 3e-3
        ),
        "single_spike": run(np.where(np.arange(n) == 150, 20.0, noisy(decay(n, floor=0.3), 0.05)), ratio=2e-3),
    }


HEALTHY = _healthy()
ALL_RULES: list[Callable[[RunView, AdvisorConfig], list[Diagnosis]]] = [
    loss_diverging,
    loss_oscillating,
    loss_not_decreasing,
    initial_loss_off,
    overfitting,
    underfitting,
    lr_too_high,
    lr_too_low,
]


def fired(fn: Callable[[RunView, AdvisorConfig], list[Diagnosis]], view: RunView, every: int = 10) -> list[str]:
    """Where ``fn`` fired when checked every ``every`` steps (and at the end)."""
    hits = []
    for step in [*range(every, view.last_step, every), view.last_step]:
        out = fn(prefix(view, step), CFG)
        if out:
            hits.append(f"step {step}: {out[0].message}")
    return hits


@pytest.mark.parametrize("fn", ALL_RULES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_runs_stay_silent(name: str, fn: Callable[[RunView, AdvisorConfig], list[Diagnosis]]) -> None:
    view = HEALTHY[name]
    if fn in (overfitting, underfitting):  # those need a validation loss: give it one that tracks training
        loss = view.series("loss")
        val = {s: 1.05 * float(loss.loc[s - 19 : s].median()) for s in range(19, view.last_step + 1, 20)}
        rows = pd.DataFrame({"step": list(val), "layer": "", "stat": "val_loss", "value": list(val.values())})
        view = RunView(pd.concat([view.history, rows], ignore_index=True), view.facts)
    assert fired(fn, view) == []


# -- cases that must fire --------------------------------------------------------------------

N = 300
base = noisy(decay(N, floor=0.3, tau=30), 0.05)
lr5_loss = [1.38, 1.24, 3.54, 359.0, 1.2e7, 7.9e14] + [math.nan] * 20
lr5_ratio = [0.23, 0.54, 4.9, 27.8, 2250.0, 1.6e7] + [math.nan] * 20
plateau_loss = noisy(np.concatenate([decay(60, tau=12, floor=0.9), np.full(200, 0.9)]), 0.01)
jump = noisy(np.full(200, 5.0), 0.3, seed=3)
jump[0] = LN4
osc = np.concatenate([noisy(decay(40, floor=1.1, tau=10), 0.02), noisy(np.full(760, 1.2), 0.7, seed=4)])
flat_ln4 = noisy(np.full(150, LN4), 0.01, seed=5)
val_rising = {s: 0.5 + abs(s - 100) * 0.0025 for s in range(19, 400, 20)}
val_stalls = {s: max(0.6, 1.3 - s * 0.005) + 0.005 * ((s // 20) % 2) for s in range(19, 400, 20)}
under_loss = noisy(np.concatenate([decay(40, tau=8, floor=1.25), np.full(160, 1.25)]), 0.02, seed=6)

FIRE = [
    # loss_diverging
    pytest.param(
        loss_diverging, run(climb(base, 150, 10.0, 60)), "loss_diverging", "error", (150, 210), id="diverge-late"
    ),
    pytest.param(loss_diverging, run(lr5_loss[:6]), "loss_diverging", "error", (3, 4), id="diverge-explodes"),
    pytest.param(loss_diverging, run(jump), "loss_diverging", "error", (0, 20), id="diverge-jump-at-step-1"),
    # loss_oscillating
    pytest.param(loss_oscillating, run(osc), "loss_oscillating", "warning", (0, 450), id="oscillating-no-progress"),
    # loss_not_decreasing
    pytest.param(loss_not_decreasing, run(flat_ln4), "loss_not_decreasing", "warning", (0, 0), id="flat-from-start"),
    pytest.param(
        loss_not_decreasing, run(plateau_loss), "loss_not_decreasing", "warning", (40, 90), id="plateau-after-drop"
    ),
    pytest.param(
        loss_not_decreasing,
        run(noisy(np.full(1500, 0.8), 0.1, seed=7)),
        "loss_not_decreasing",
        "warning",
        (0, 1200),
        id="noisy-flat-long-run",
    ),
    # initial_loss_off
    pytest.param(
        initial_loss_off,
        run(decay(100, start=12.0, floor=0.5), out_width=10, out_std=8.0),
        "initial_loss_off",
        "warning",
        (0, 0),
        id="init-overconfident-10-classes",
    ),
    pytest.param(
        initial_loss_off,
        run(decay(100, start=0.4, floor=0.1), out_width=10, num_classes=10),
        "initial_loss_off",
        "warning",
        (0, 0),
        id="init-too-low-declared-classes",
    ),
    # overfitting
    pytest.param(
        overfitting,
        run(noisy(decay(400, floor=0.02, tau=80), 0.1), val=val_rising),
        "overfitting",
        "warning",
        (100, 140),
        id="overfit-val-rises",
    ),
    pytest.param(
        overfitting,
        run(noisy(decay(400, floor=0.02, tau=80), 0.1), val=val_stalls),
        "overfitting",
        "warning",
        (130, 260),
        id="overfit-gap-val-stalls",
    ),
    # underfitting
    pytest.param(
        underfitting,
        run(under_loss, val={s: 1.26 for s in range(9, 200, 10)}),
        "underfitting",
        "info",
        (10, 60),
        id="underfit-high-flat-no-gap",
    ),
    # lr_too_high
    pytest.param(lr_too_high, run(lr5_loss, ratio=lr5_ratio), "lr_too_high", "error", (0, 0), id="lr-high-nan"),
    pytest.param(
        lr_too_high,
        run(climb(base, 150, 10.0, 40), ratio=lambda s: 0.3 if s >= 150 else 2e-3),
        "lr_too_high",
        "error",
        (150, 160),
        id="lr-high-diverging",
    ),
    pytest.param(
        lr_too_high,
        run(jump, ratio=lambda s: 0.7 if s < 5 else 0.03, lr=1.0),
        "lr_too_high",
        "error",
        (0, 0),
        id="lr-high-adam-jump-ratio-at-onset",
    ),
    pytest.param(
        lr_too_high,
        run(
            noisy(np.where(np.arange(150) < 25, decay(150, tau=20), LN4), 0.01),
            ratio=lambda s: 0.5 if s < 25 else 0.0,
            dead=lambda s: 0.05 if s < 25 else 1.0,
            schedule=lambda s: True,
        ),
        "lr_too_high",
        "error",
        (0, 0),
        id="lr-high-relu-collapse",
    ),
    pytest.param(lr_too_high, run(osc, ratio=0.3), "lr_too_high", "error", (0, 0), id="lr-high-oscillating"),
    # lr_too_low
    pytest.param(lr_too_low, run(flat_ln4, ratio=2e-9, lr=1e-7), "lr_too_low", "warning", (0, 0), id="lr-low-tiny"),
    pytest.param(
        lr_too_low, run(flat_ln4, ratio=0.0, lr=1e-8), "lr_too_low", "warning", (0, 0), id="lr-low-float32-zero"
    ),
    pytest.param(
        lr_too_low,
        run(noisy(decay(400, tau=30, floor=0.8, flat=0), 0.01), ratio=lambda s: 2e-3 if s < 200 else 1e-7),
        "lr_too_low",
        "warning",
        (200, 200),
        id="lr-low-after-bad-manual-change",
    ),
]


@pytest.mark.parametrize(("fn", "view", "code", "severity", "onset"), FIRE)
def test_rule_fires(
    fn: Callable[[RunView, AdvisorConfig], list[Diagnosis]],
    view: RunView,
    code: str,
    severity: str,
    onset: tuple[int, int],
) -> None:
    out = fn(view, CFG)
    assert [d.code for d in out] == [code], out
    d = out[0]
    assert d.severity == severity
    assert d.layer is None
    assert onset[0] <= d.step <= onset[1], (d.step, d.message)
    _check_style(d)


def _check_style(d: Diagnosis) -> None:
    """One plain sentence with its numbers; float evidence; concrete suggestions."""
    assert d.message.endswith("."), d.message
    assert ". " not in d.message[:-1], d.message
    assert any(ch.isdigit() for ch in d.message), d.message
    assert d.evidence and all(isinstance(v, float) and math.isfinite(v) for v in d.evidence.values()), d.evidence
    assert len(d.suggestions) >= 2


# -- silent cases specific to one rule ------------------------------------------------------

SILENT = [
    pytest.param(
        loss_diverging,
        run(noisy(np.full(2000, 0.7), 0.6, seed=8)),
        id="diverge-noisy-plateau-long-run",
    ),
    pytest.param(
        loss_diverging,
        run(climb(noisy(decay(200, floor=1e-4, tau=10), 0.3), 100, 5.0, 100)),
        id="diverge-rise-within-converged-region",
    ),
    pytest.param(
        loss_oscillating,
        run(noisy(decay(800, floor=0.05, tau=400), 0.6, seed=9)),
        id="oscillating-very-noisy-but-decreasing",
    ),
    pytest.param(loss_oscillating, run(noisy(np.full(300, 1e-4), 1.0)), id="oscillating-converged-near-zero"),
    pytest.param(
        loss_not_decreasing,
        run(noisy(np.concatenate([decay(100, tau=10, floor=0.05), np.full(200, 0.05)]), 0.3)),
        id="flat-converged-relative",
    ),
    pytest.param(loss_not_decreasing, run(noisy(np.full(40, LN4), 0.01)), id="flat-too-short-to-judge"),
    pytest.param(
        loss_not_decreasing,
        run(noisy(0.5 + (1.0 + np.arange(5000) / 100.0) ** -0.5, 0.05, seed=10)),
        id="flat-slow-late-progress-long-run",
    ),
    pytest.param(initial_loss_off, run(decay(100, start=2.35), out_width=10), id="init-at-ln-c"),
    pytest.param(
        initial_loss_off, run(decay(100, start=40.0), out_width=1, out_std=0.2), id="init-regression-1-output"
    ),
    pytest.param(
        initial_loss_off,
        run(decay(100, start=25.0), out_width=3, out_std=0.3),
        id="init-multi-output-regression-mse",
    ),
    pytest.param(
        initial_loss_off, run(decay(100, start=0.3), out_width=3, out_std=0.3), id="init-multi-output-small-mse"
    ),
    pytest.param(
        initial_loss_off, run(decay(100, start=0.4, floor=0.1), out_width=10), id="init-pretrained-inferred-c"
    ),
    pytest.param(
        overfitting,
        run(
            noisy(decay(300, tau=20, floor=0.17), 0.4, seed=11),
            val={s: decay(300, tau=20, floor=0.23)[s] + 0.01 * math.sin(s) for s in range(19, 300, 20)},
        ),
        id="overfit-converged-constant-gap",
    ),
    pytest.param(
        overfitting,
        run(
            noisy(decay(400, floor=1e-3, tau=30), 0.3),
            val={s: 0.01 + 0.002 * ((s // 20) % 2) for s in range(19, 400, 20)},
        ),
        id="overfit-val-converged-near-zero",
    ),
    pytest.param(
        underfitting,
        run(noisy(decay(200, tau=20, floor=0.3), 0.02), val={s: 0.31 for s in range(9, 200, 10)}),
        id="underfit-classifier-learned",
    ),
    pytest.param(underfitting, run(under_loss, val={s: 1.7 for s in range(9, 200, 10)}), id="underfit-with-gap"),
    pytest.param(
        lr_too_high,
        run(climb(base, 150, 10.0, 40), ratio=1e-3),
        id="lr-high-diverging-with-healthy-ratio",
    ),
    pytest.param(
        lr_too_high,
        run(noisy(np.full(150, LN4), 0.01), ratio=0.5, dead=1.0),
        id="lr-high-dead-from-init-is-not-lr",
    ),
    pytest.param(
        lr_too_low,
        run(noisy(np.full(300, 1e-4), 0.3), ratio=1e-7),
        id="lr-low-converged",
    ),
    pytest.param(
        lr_too_low,
        run(
            noisy(np.concatenate([decay(150, tau=30, floor=0.3), np.full(150, 0.3)]), 0.02),
            ratio=lambda s: 2e-3 * 0.5 * (1 + math.cos(math.pi * s / 300)) + 1e-9,
            lr=lambda s: 0.1 * 0.5 * (1 + math.cos(math.pi * s / 300)) + 1e-7,
        ),
        id="lr-low-cosine-decayed",
    ),
    pytest.param(
        lr_too_low,
        run(
            noisy(decay(300, tau=40, flat=60), 0.01),
            ratio=lambda s: 2e-3 * min(1.0, s / 200) + 1e-9,
            lr=lambda s: 1e-3 * min(1.0, s / 200) + 1e-9,
        ),
        id="lr-low-during-warmup",
    ),
    pytest.param(lr_too_low, run(flat_ln4, ratio=1e-8, grad_ratio=1e-7), id="lr-low-vanishing-gradients-are-not-lr"),
    pytest.param(
        lr_too_low,
        run(flat_ln4, ratio=1e-8, layer_ratio={"net.4.weight": 1e-3}),
        id="lr-low-only-some-layers-slow",
    ),
    pytest.param(
        lr_too_low,
        run(flat_ln4, ratio=2e-3, layer_ratio={"net.0.weight": 0.0, "net.2.weight": 0.0}, frozen=WEIGHTS[:2]),
        id="lr-low-frozen-layers-excluded",
    ),
]


@pytest.mark.parametrize(("fn", "view"), SILENT)
def test_rule_silent(fn: Callable[[RunView, AdvisorConfig], list[Diagnosis]], view: RunView) -> None:
    assert fired(fn, view, every=max(10, view.last_step // 60)) == []


# -- holding at the end, thresholds, registration -------------------------------------------


def test_diagnosis_resolves_when_the_loss_recovers() -> None:
    """A rule describes what holds at the end of the view: after a recovery it returns nothing."""
    loss = np.concatenate([climb(base[:200], 100, 10.0, 30)[:160], noisy(np.full(100, 0.3), 0.05)])
    view = run(loss)
    assert loss_diverging(prefix(view, 150), CFG)
    assert loss_diverging(view, CFG) == []


def test_thresholds_come_from_the_config() -> None:
    view = run(climb(base, 150, 3.0, 60))
    assert loss_diverging(view, CFG)
    assert loss_diverging(view, AdvisorConfig.from_dict({"diverge_factor": 4.0})) == []
    flat = run(flat_ln4, ratio=2e-9)
    assert lr_too_low(flat, CFG)
    # both forms of lr_too_low (flat loss, creeping loss) scale with update_ratio_low
    assert lr_too_low(flat, AdvisorConfig.from_dict({"update_ratio_low": 1e-10})) == []
    assert lr_too_low(flat, AdvisorConfig.from_dict({"update_ratio_low": 1e-9, "lr_creep_factor": 1.0})) == []


def test_rules_are_registered() -> None:
    for code in (
        "loss_diverging",
        "loss_oscillating",
        "loss_not_decreasing",
        "initial_loss_off",
        "overfitting",
        "underfitting",
        "lr_too_high",
        "lr_too_low",
    ):
        assert code in RULES
    assert RULES["overfitting"].requires == ("loss", "val_loss")


def test_advisor_names_the_cause_not_the_symptom() -> None:
    """lr_too_high explains the divergence, lr_too_low the flat loss (EXPLAINED_BY)."""
    adv = Advisor()
    codes = {d.code for d in adv.check(run(climb(base, 150, 10.0, 40), ratio=lambda s: 0.3 if s >= 150 else 2e-3))}
    assert "lr_too_high" in codes and "loss_diverging" not in codes
    codes = {d.code for d in Advisor().check(run(flat_ln4, ratio=2e-9, lr=1e-7))}
    assert "lr_too_low" in codes and "loss_not_decreasing" not in codes


# -- real short training runs through nndiag.Monitor ---------------------------------------------


def _train(opt_fn: Callable[[Any], torch.optim.Optimizer], steps: int, schedule: int | None = 1) -> list[Diagnosis]:
    torch.manual_seed(0)
    x, y = blobs(n=512, seed=0)
    model = mlp(20, 4, hidden=32, depth=2)
    opt = opt_fn(model.parameters())
    logging.disable(logging.CRITICAL)  # the Monitor's own advisor loop logs its findings
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread, and the Monitor's writer thread gets the other core
    try:
        with nndiag.Monitor(model, opt, log_dir=None, schedule=schedule) as mon:
            for step in range(steps):
                i = (step * 32) % 512
                loss = nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.step(loss.detach())
    finally:
        torch.set_num_threads(threads)
        logging.disable(logging.NOTSET)
    return Advisor().check(RunView(mon.history, mon.session.facts))


def test_real_run_lr_far_too_high() -> None:
    out = _train(lambda p: torch.optim.SGD(p, lr=5.0), 30)
    codes = {d.code for d in out}
    assert "lr_too_high" in codes, [d.message for d in out]
    assert "nonfinite_loss" in codes or "loss_diverging" in codes
    high = next(d for d in out if d.code == "lr_too_high")
    assert high.severity == "error" and high.step <= 5


def test_real_run_lr_far_too_low() -> None:
    out = _train(lambda p: torch.optim.SGD(p, lr=1e-7), 70, schedule=None)
    codes = {d.code for d in out}
    assert "lr_too_low" in codes, [d.message for d in out]
    assert not {"lr_too_high", "loss_diverging", "loss_not_decreasing"} & codes


@pytest.mark.parametrize(
    "opt_fn",
    [
        pytest.param(lambda p: torch.optim.SGD(p, lr=0.05), id="sgd-0.05"),
        pytest.param(lambda p: torch.optim.Adam(p, lr=1e-3), id="adam-1e-3"),
    ],
)
def test_real_healthy_run_is_silent(opt_fn: Callable[[Any], torch.optim.Optimizer]) -> None:
    out = _train(opt_fn, 100, schedule=None)
    assert [d.message for d in out if d.severity in ("warning", "error")] == []
