"""The task rules on tables of synthetic histories, faulty and healthy, judged by the whole registry.

Each case runs every registered rule through the Advisor (so ``explained_by`` applies, as in a
run) and compares the warnings/errors (and the ``undertrained`` advice) about the task with what an
engineer would name. Histories: a loss curve, update ratios, weight and gradient norms every 10
steps, the optimizer's lr; facts: the task facts the TaskProbe records.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nndiag.advisor import Advisor
from nndiag.rules.view import RunView

W = "fc.weight"
PARAMS = {W: {"shape": [16, 8]}, "out.weight": {"shape": [1, 16]}}
SPOKEN = {
    "loss_at_baseline",
    "regularization_too_strong",
    "undertrained",
    "lr_too_low",
    "lr_too_high",
    "loss_not_decreasing",
    "target_not_normalized",
    "output_activation_mismatch",
    "loss_mismatch",
}


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


def verdict(h: pd.DataFrame, f: dict, finished: bool = False) -> list[str]:
    """``code:severity`` of what the whole registry says about the task (warnings/errors, and undertrained)."""
    found = Advisor().evaluate(RunView(h, f, finished)).values()
    return sorted(
        f"{d.code}:{d.severity}"
        for d in found
        if d.code in SPOKEN and (d.severity != "info" or d.code == "undertrained")
    )


LN10 = math.log(10)
FLAT_AT_PRIOR = lambda s: LN10 + noise(s)  # noqa: E731

# -- loss_at_baseline -------------------------------------------------------------------------

BASELINE_CASES = [
    pytest.param(history(FLAT_AT_PRIOR), facts(), ["loss_at_baseline:error"], id="flat_at_prior_labels"),
    pytest.param(
        history(lambda s: 0.66 + noise(s), steps=250),
        facts("bce_with_logits", 0.66),
        ["loss_at_baseline:error"],
        id="binary_at_prior",
    ),
    pytest.param(
        history(FLAT_AT_PRIOR, ratio=lambda s: 0.5 if s < 30 else 1e-9),
        facts(),
        ["lr_too_high:error"],
        id="collapse_after_huge_updates",
    ),
    pytest.param(history(lambda s: LN10 * math.exp(-s / 60) + 0.1), facts(), [], id="learns"),
    # a flat loss well below the baseline: the model learned something, then stalled (not "learns nothing")
    pytest.param(
        history(lambda s: 0.75 * LN10 + noise(s)), facts(), ["loss_not_decreasing:warning"], id="below_baseline_stall"
    ),
    pytest.param(history(FLAT_AT_PRIOR, steps=120), facts(), ["loss_at_baseline:error"], id="flat_for_120_steps"),
    pytest.param(history(FLAT_AT_PRIOR, steps=40), facts(), [], id="too_early_to_judge"),
    # without a baseline only the flat loss is known
    pytest.param(history(FLAT_AT_PRIOR), facts(baseline=None), ["loss_not_decreasing:warning"], id="baseline_unknown"),
    pytest.param(
        history(FLAT_AT_PRIOR),
        facts(kind="unknown", baseline=None),
        ["loss_not_decreasing:warning"],
        id="custom_loss",
    ),
    # the cause that explains a loss at the baseline is named instead
    pytest.param(
        history(lambda s: 1.0 + noise(s)),
        facts("mse", 1.0, loss={"broadcast_from": [32, 1]}),
        ["loss_mismatch:error"],
        id="broadcast_named_by_loss_mismatch",
    ),
    pytest.param(
        history(lambda s: 1.0 + noise(s)),
        facts("mse", 1.0, loss={"reduced_shape": [32, 32]}, task={"output": {"shape": [32, 1]}}),
        ["loss_mismatch:error"],
        id="hand_written_broadcast",
    ),
    pytest.param(
        history(lambda s: 5900 + 10 * noise(s)),
        facts("mse", 5930.0, target={"mean": 152.0, "std": 77.0, "looks_like": "continuous"}),
        ["target_not_normalized:warning"],
        id="unscaled_targets_named_elsewhere",
    ),
    # weight decay whose weights do not shrink is not the cause
    pytest.param(history(FLAT_AT_PRIOR), facts(weight_decay=0.5), ["loss_at_baseline:error"], id="weights_hold"),
    pytest.param(
        history(lambda s: 1.0 + noise(s)),
        facts(
            "mse",
            1.0,
            loss={"input_activation": "sigmoid"},
            target={"min": -1.6, "max": 2.4, "looks_like": "continuous"},
        ),
        ["output_activation_mismatch:error"],
        id="sigmoid_output_named_elsewhere",
    ),
    pytest.param(
        history(FLAT_AT_PRIOR),
        facts(loss={"note": "softmax_before_cross_entropy"}),
        ["output_activation_mismatch:warning"],
        id="double_softmax_named_elsewhere",
    ),
    pytest.param(
        history(FLAT_AT_PRIOR, ratio=lambda s: 5e-5), facts(), ["lr_too_low:warning"], id="tiny_lr_named_elsewhere"
    ),
]


@pytest.mark.parametrize(("h", "f", "expected"), BASELINE_CASES)
def test_loss_at_baseline(h: pd.DataFrame, f: dict, expected: list[str]) -> None:
    assert verdict(h, f) == expected


def test_loss_at_baseline_message_names_the_numbers() -> None:
    (d,) = [
        d for d in Advisor().evaluate(RunView(history(FLAT_AT_PRIOR), facts())).values() if d.code == "loss_at_baseline"
    ]
    assert "2.3" in d.message and "class frequencies" in d.message and "learns nothing" in d.message
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
    # a weak decay cannot be what shrinks the weights: the loss at the baseline is named
    pytest.param(
        history(FLAT_AT_PRIOR, wnorm=SHRINK),
        facts(weight_decay=1e-4),
        ["loss_at_baseline:error"],
        id="weight_decay_1e-4",
    ),
    pytest.param(
        history(FLAT_AT_PRIOR, wnorm=SHRINK),
        facts(optimizer="AdamW", weight_decay=0.01),
        ["loss_at_baseline:error"],
        id="adamw_default",
    ),
    pytest.param(history(FLAT_AT_PRIOR), facts(weight_decay=0.5), ["loss_at_baseline:error"], id="weights_hold"),
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
    pytest.param(
        history(FLAT_AT_PRIOR, wnorm=SHRINK),
        {"params": PARAMS},
        ["loss_not_decreasing:warning"],
        id="no_optimizer_facts",
    ),
]


@pytest.mark.parametrize(("h", "f", "expected"), REG_CASES)
def test_regularization_too_strong(h: pd.DataFrame, f: dict, expected: list[str]) -> None:
    assert verdict(h, f) == expected


# -- undertrained -----------------------------------------------------------------------------

FALLING = lambda s: LN10 * (1 - 0.006 * s) * (1 + noise(s))  # noqa: E731
DECAYED = lambda s: LN10 * math.exp(-s / 60) * (1 + noise(s))  # noqa: E731

UNDER_CASES = [
    pytest.param(history(FALLING, steps=120), facts(final_step=119), ["undertrained:info"], id="stopped_falling"),
    pytest.param(history(FALLING, steps=120), facts(final_step=299), [], id="not_the_end_yet"),
    pytest.param(history(FALLING, steps=120), facts(), [], id="end_unknown"),
    pytest.param(history(DECAYED, steps=400), facts(final_step=399), [], id="converged_near_zero"),
    pytest.param(
        history(lambda s: 0.3 * LN10 * math.exp(-s / 400), steps=300),
        facts(final_step=299),
        [],
        id="refining_far_below_baseline",
    ),
    pytest.param(history(FLAT_AT_PRIOR, steps=300), facts(final_step=299), ["loss_at_baseline:error"], id="flat"),
    pytest.param(
        history(lambda s: 0.5 * (1 + 0.5 * math.sin(s)) * math.exp(-s / 400), steps=120),
        facts(final_step=119),
        [],
        id="noise_above_trend",
    ),
    # tiny update ratios, but the loss falls fast: not the learning rate; training stopped early
    pytest.param(
        history(FALLING, steps=120, ratio=lambda s: 5e-5),
        facts(final_step=119),
        ["undertrained:info"],
        id="tiny_ratio_loss_falling",
    ),
]


@pytest.mark.parametrize(("h", "f", "expected"), UNDER_CASES)
def test_undertrained(h: pd.DataFrame, f: dict, expected: list[str]) -> None:
    f = dict(f)
    finished = f.pop("final_step", None) == int(h.step.max())  # the run ended at the last recorded step
    assert verdict(h, f, finished) == expected


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
    assert verdict(h, f) == expected


def test_rules_tolerate_empty_and_nan() -> None:
    empty = pd.DataFrame(columns=["step", "layer", "stat", "value"])
    nan = history(lambda s: float("nan") if s % 7 == 0 else LN10 + noise(s))
    assert Advisor().evaluate(RunView(empty, {})) == {}
    found = Advisor().evaluate(RunView(nan, facts(), finished=True))
    assert all(np.isfinite(d.evidence.get("loss", 0.0)) for d in found.values())
