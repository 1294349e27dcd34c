"""The draft task rules (``nndiag/rules/task.py``) on tables of synthetic histories, faulty and healthy,
and end to end on the task calibration scenarios of their codes and their healthy look-alikes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nndiag.diagnosis import Diagnosis
from nndiag.rules.task import (
    TaskRuleThresholds,
    loss_at_baseline,
    lr_too_low_creeping,
    regularization_too_strong,
    undertrained,
)
from nndiag.rules.view import RunView

TH = TaskRuleThresholds()
W = "fc.weight"
PARAMS = {W: {"shape": [16, 8]}, "out.weight": {"shape": [1, 16]}}


def history(
    loss: Callable[[int], float],
    steps: int = 300,
    ratio: Callable[[int], float] = lambda s: 1e-3,
    wnorm: Callable[[int], float] = lambda s: 5.0,
    grad: float = 0.05,
    lr: Callable[[int], float] = lambda s: 1e-3,
    every: int = 10,
) -> pd.DataFrame:
    rows: list[tuple[int, str, str, float]] = [(s, "", "loss", loss(s)) for s in range(steps)]
    for s in range(0, steps, every):
        for p in PARAMS:
            rows += [(s, p, "update_ratio", ratio(s)), (s, p, "weight_norm", wnorm(s)), (s, p, "grad_norm", grad)]
        rows.append((s, "opt0/group0", "lr", lr(s)))
    return pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])


def facts(
    kind: str = "cross_entropy",
    baseline: float | None = math.log(10),
    optimizer: str = "Adam",
    weight_decay: float = 0.0,
    lr: float = 1e-3,
    **extra: Any,
) -> dict[str, Any]:
    loss: dict[str, Any] = {"kind": kind, "input_activation": "none"}
    loss.update(extra.pop("loss", {}))
    task: dict[str, Any] = {"loss": loss, "baseline_loss": baseline, "target": extra.pop("target", {})}
    task.update(extra.pop("task", {}))
    return {
        "params": PARAMS,
        "optimizers": [{"class": optimizer, "param_groups": [{"lr": lr, "weight_decay": weight_decay}]}],
        "task": task,
        **extra,
    }


def noise(s: int, amp: float = 0.01) -> float:
    return amp * math.sin(1.7 * s) * math.cos(0.3 * s)


def codes(fn: Callable[[RunView, TaskRuleThresholds], list[Diagnosis]], h: pd.DataFrame, f: dict) -> list[str]:
    return [f"{d.code}:{d.severity}" for d in fn(RunView(h, f), TH)]


LN10 = math.log(10)
FLAT_AT_PRIOR = lambda s: LN10 + noise(s)  # noqa: E731

# -- loss_at_baseline -------------------------------------------------------------------------

BASELINE_CASES = [
    pytest.param(history(FLAT_AT_PRIOR), facts(), ["loss_at_baseline:warning"], id="flat_at_prior_labels"),
    pytest.param(
        history(lambda s: 0.66 + noise(s), steps=250),
        facts("bce_with_logits", 0.66),
        ["loss_at_baseline:warning"],
        id="binary_at_prior",
    ),
    pytest.param(
        history(FLAT_AT_PRIOR, ratio=lambda s: 0.5 if s < 30 else 1e-9),
        facts(),
        ["lr_too_high:error"],
        id="collapse_after_huge_updates",
    ),
    pytest.param(history(lambda s: LN10 * math.exp(-s / 60) + 0.1), facts(), [], id="learns"),
    pytest.param(history(lambda s: 0.75 * LN10 + noise(s)), facts(), [], id="below_baseline_hard_task"),
    pytest.param(history(FLAT_AT_PRIOR, steps=120), facts(), [], id="too_early_to_judge"),
    pytest.param(history(FLAT_AT_PRIOR), facts(baseline=None), [], id="baseline_unknown"),
    pytest.param(
        history(FLAT_AT_PRIOR),
        facts(kind="unknown", baseline=None),
        [],
        id="custom_loss",
    ),
    pytest.param(
        history(lambda s: 1.0 + noise(s)),
        facts("mse", 1.0, loss={"broadcast_from": [32, 1]}),
        [],
        id="broadcast_named_by_loss_mismatch",
    ),
    pytest.param(
        history(lambda s: 1.0 + noise(s)),
        facts("mse", 1.0, loss={"reduced_shape": [32, 32]}, task={"output": {"shape": [32, 1]}}),
        [],
        id="hand_written_broadcast",
    ),
    pytest.param(
        history(lambda s: 5900 + 10 * noise(s)),
        facts("mse", 5930.0, target={"mean": 152.0, "std": 77.0}),
        [],
        id="unscaled_targets_named_elsewhere",
    ),
    pytest.param(history(FLAT_AT_PRIOR), facts(weight_decay=0.5), [], id="weight_decay_named_elsewhere"),
    pytest.param(
        history(lambda s: 1.0 + noise(s)),
        facts("mse", 1.0, loss={"input_activation": "sigmoid"}, target={"min": -1.6, "max": 2.4}),
        [],
        id="sigmoid_output_named_elsewhere",
    ),
    pytest.param(
        history(FLAT_AT_PRIOR),
        facts(loss={"note": "softmax_before_cross_entropy"}),
        [],
        id="double_softmax_named_elsewhere",
    ),
    pytest.param(history(FLAT_AT_PRIOR, ratio=lambda s: 5e-5), facts(), [], id="tiny_lr_named_elsewhere"),
]


@pytest.mark.parametrize(("h", "f", "expected"), BASELINE_CASES)
def test_loss_at_baseline(h: pd.DataFrame, f: dict, expected: list[str]) -> None:
    assert codes(loss_at_baseline, h, f) == expected


def test_loss_at_baseline_message_names_the_numbers() -> None:
    (d,) = loss_at_baseline(RunView(history(FLAT_AT_PRIOR), facts()), TH)
    assert "2.30" in d.message and "class prior" in d.message and "labels" in d.message
    assert d.evidence["baseline_loss"] == pytest.approx(LN10) and d.suggestions[0].startswith("Check that inputs")


# -- regularization_too_strong ----------------------------------------------------------------

SHRINK = lambda s: 5.0 * math.exp(-s / 60)  # noqa: E731

REG_CASES = [
    pytest.param(
        history(FLAT_AT_PRIOR, wnorm=SHRINK),
        facts(weight_decay=0.5),
        ["regularization_too_strong:warning"],
        id="adam_l2",
    ),
    pytest.param(
        history(FLAT_AT_PRIOR, wnorm=SHRINK),
        facts(optimizer="AdamW", weight_decay=1.0, lr=1e-3),
        ["regularization_too_strong:warning"],
        id="adamw_decay_1",
    ),
    pytest.param(
        history(FLAT_AT_PRIOR, wnorm=SHRINK),
        facts(loss={"extra_terms": True}),
        ["regularization_too_strong:warning"],
        id="penalty_term",
    ),
    pytest.param(history(FLAT_AT_PRIOR, wnorm=SHRINK), facts(weight_decay=1e-4), [], id="weight_decay_1e-4"),
    pytest.param(
        history(FLAT_AT_PRIOR, wnorm=SHRINK), facts(optimizer="AdamW", weight_decay=0.01), [], id="adamw_default"
    ),
    pytest.param(history(FLAT_AT_PRIOR), facts(weight_decay=0.5), [], id="weights_hold"),
    pytest.param(
        history(lambda s: LN10 * math.exp(-s / 50) + 0.05, wnorm=SHRINK),
        facts(weight_decay=0.5),
        [],
        id="fits_anyway",
    ),
    pytest.param(
        history(FLAT_AT_PRIOR, wnorm=SHRINK),
        {"params": PARAMS, "optimizers": [{"class": "Adam", "param_groups": [{"lr": 1e-3, "weight_decay": 0.5}]}]},
        ["regularization_too_strong:warning"],
        id="no_task_facts_start_level",
    ),
    pytest.param(history(FLAT_AT_PRIOR, wnorm=SHRINK), {"params": PARAMS}, [], id="no_optimizer_facts"),
]


@pytest.mark.parametrize(("h", "f", "expected"), REG_CASES)
def test_regularization_too_strong(h: pd.DataFrame, f: dict, expected: list[str]) -> None:
    assert codes(regularization_too_strong, h, f) == expected


# -- undertrained -----------------------------------------------------------------------------

FALLING = lambda s: LN10 * (1 - 0.006 * s) * (1 + noise(s))  # noqa: E731
DECAYED = lambda s: LN10 * math.exp(-s / 60) * (1 + noise(s))  # noqa: E731

UNDER_CASES = [
    pytest.param(history(FALLING, steps=120), facts(final_step=119), ["undertrained:warning"], id="stopped_falling"),
    pytest.param(
        history(FALLING, steps=120), facts(total_steps=120), ["undertrained:warning"], id="lightning_total_steps"
    ),
    pytest.param(history(FALLING, steps=120), facts(final_step=299), [], id="not_the_end_yet"),
    pytest.param(history(FALLING, steps=120), facts(), [], id="end_unknown"),
    pytest.param(history(DECAYED, steps=400), facts(final_step=399), [], id="converged_near_zero"),
    pytest.param(
        history(lambda s: 0.3 * LN10 * math.exp(-s / 400), steps=300),
        facts(final_step=299),
        [],
        id="refining_far_below_baseline",
    ),
    pytest.param(history(FLAT_AT_PRIOR, steps=300), facts(final_step=299), [], id="flat"),
    pytest.param(
        history(lambda s: 0.5 * (1 + 0.5 * math.sin(s)) * math.exp(-s / 400), steps=120),
        facts(final_step=119),
        [],
        id="noise_above_trend",
    ),
    pytest.param(
        history(FALLING, steps=120, ratio=lambda s: 5e-5), facts(final_step=119), [], id="slow_lr_named_elsewhere"
    ),
]


@pytest.mark.parametrize(("h", "f", "expected"), UNDER_CASES)
def test_undertrained(h: pd.DataFrame, f: dict, expected: list[str]) -> None:
    assert codes(undertrained, h, f) == expected


# -- lr_too_low (creeping) ----------------------------------------------------------------------

CREEP = lambda s: LN10 - 0.0005 * s + noise(s, 0.003)  # noqa: E731

LR_CASES = [
    pytest.param(
        history(CREEP, ratio=lambda s: 7e-5, lr=lambda s: 1e-5), facts(), ["lr_too_low:warning"], id="adam_1e-5"
    ),
    pytest.param(
        history(CREEP, ratio=lambda s: 7e-5),
        {"params": PARAMS},
        ["lr_too_low:warning"],
        id="no_task_facts_start_level",
    ),
    pytest.param(history(CREEP, ratio=lambda s: 1e-3), facts(), [], id="healthy_ratio"),
    pytest.param(history(lambda s: 0.2 + noise(s), ratio=lambda s: 7e-5), facts(), [], id="already_fitted"),
    pytest.param(
        history(CREEP, ratio=lambda s: 7e-5, lr=lambda s: 0.1 * 0.5 * (1 + math.cos(math.pi * s / 300))),
        facts(),
        [],
        id="scheduler_decayed",
    ),
    pytest.param(history(CREEP, ratio=lambda s: 7e-5, grad=1e-5), facts(), [], id="gradients_vanish"),
    pytest.param(history(CREEP, steps=40, ratio=lambda s: 7e-5), facts(), [], id="too_early"),
]


@pytest.mark.parametrize(("h", "f", "expected"), LR_CASES)
def test_lr_too_low_creeping(h: pd.DataFrame, f: dict, expected: list[str]) -> None:
    assert codes(lr_too_low_creeping, h, f) == expected


def test_rules_tolerate_empty_and_nan() -> None:
    empty = pd.DataFrame(columns=["step", "layer", "stat", "value"])
    nan = history(lambda s: float("nan") if s % 7 == 0 else LN10 + noise(s))
    for fn in (loss_at_baseline, regularization_too_strong, undertrained, lr_too_low_creeping):
        assert fn(RunView(empty, {}), TH) == []
        fn(RunView(nan, facts(final_step=299)), TH)  # no exception
    assert np.isfinite(loss_at_baseline(RunView(nan, facts()), TH)[0].evidence["loss"])


# -- end to end on the task scenarios -----------------------------------------------------------

MY_CODES = {
    "loss_at_baseline": loss_at_baseline,
    "regularization_too_strong": regularization_too_strong,
    "undertrained": undertrained,
    "lr_too_low": lr_too_low_creeping,
}


def _scenarios() -> list[Any]:
    from faults.task_scenarios import LOOKALIKES, TASK_SCENARIOS

    names = {n for code in MY_CODES for n in LOOKALIKES[code]} | {"adam_lr_high_collapse_to_prior"}
    return [
        pytest.param(s, id=s.name, marks=pytest.mark.faults)
        for s in TASK_SCENARIOS
        if s.name in names or s.primary in MY_CODES
    ]


@pytest.mark.parametrize("scenario", _scenarios())
def test_task_rules_on_scenarios(scenario: Any) -> None:
    from faults.runner import logging_steps

    r = scenario.run(0)
    f = r.facts.to_dict() if hasattr(r.facts, "to_dict") else dict(r.facts)
    f["final_step"] = int(r.history.step.max())  # what the session should record at close
    steps = r.history.step.to_numpy()
    seen: set[str] = set()
    for check in logging_steps(r.history):
        view = RunView(r.history[steps <= check], f)
        for fn in MY_CODES.values():
            seen |= {d.code for d in fn(view, TH) if d.severity in ("warning", "error")}
    if scenario.healthy:
        assert not seen, f"false alarm on {scenario.name}: {seen}"
    else:
        assert seen & set(scenario.expected), f"{scenario.name}: expected {scenario.expected}, saw {seen}"
