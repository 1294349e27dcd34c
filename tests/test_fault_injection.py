"""Fault-injection calibration: every faulty scenario is diagnosed in time, every healthy one stays quiet.

Each scenario trains once (seed 0) under nndiag and the Advisor is replayed at every logging step
over the history so far (see ``tests/faults/runner.py``). Nothing is cached between runs.

Select with ``pytest -m faults``; the whole file runs in about 1.5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import pytest
from faults.runner import evaluate
from faults.scenarios import Scenario
from faults.suite import SCENARIOS

pytestmark = pytest.mark.faults

FAULTY = [pytest.param(s, id=s.name) for s in SCENARIOS if not s.healthy]
HEALTHY = [pytest.param(s, id=s.name) for s in SCENARIOS if s.healthy]


def test_suite_shape() -> None:
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names))
    assert len(FAULTY) >= 14
    assert len(HEALTHY) >= 6
    assert {s.family for s in SCENARIOS if s.healthy} >= {"mlp", "cnn_bn", "lstm", "transformer"}
    assert {s.optimizer for s in SCENARIOS if s.healthy} >= {"SGD", "Adam", "AdamW"}
    holdout = sum(s.holdout for s in SCENARIOS) / len(SCENARIOS)
    assert 0.25 <= holdout <= 0.4
    assert any(s.holdout for s in SCENARIOS if s.healthy)


@pytest.mark.parametrize("scenario", FAULTY)
def test_fault_is_diagnosed_in_time(scenario: Scenario) -> None:
    out = evaluate(scenario, seed=0)
    report = out.report()
    exhibits, evidence = scenario.check_exhibits(out.result)
    assert exhibits, f"the scenario no longer shows its fault ({evidence})\n{report}"
    assert not out.rule_errors, report
    assert out.detected, f"missed: no {'/'.join(scenario.expected)} diagnosis\n{report}"
    assert out.detected_in_time, f"detected {out.delay} steps after onset (max {scenario.max_delay})\n{report}"
    assert not out.false_alarms, f"warning/error before the fault began\n{report}"


@pytest.mark.parametrize("scenario", HEALTHY)
def test_healthy_run_has_no_warning(scenario: Scenario) -> None:
    out = evaluate(scenario, seed=0)
    report = out.report()
    trains, evidence = scenario.check_exhibits(out.result)
    assert trains, f"the healthy scenario does not train ({evidence})\n{report}"
    assert not out.rule_errors, report
    assert not out.false_alarms, f"false alarm on a healthy run\n{report}"
