"""The task-level calibration scenarios (issue 15): their shape, and that each run shows its fault.

Rule-independent: a faulty scenario must exhibit its fault in the harness's own measurements
(``check_exhibits``), a healthy one must train. Whether nndiag names the fault is the business of
``tests/test_fault_injection.py`` once ``TASK_SCENARIOS`` are part of ``SCENARIOS``.
"""

from __future__ import annotations

import pytest
from faults.scenarios import SCENARIOS, Scenario
from faults.task_scenarios import LOOKALIKES, TASK_CODES, TASK_SCENARIOS, TaskRunResult

pytestmark = pytest.mark.faults

BY_NAME = {s.name: s for s in TASK_SCENARIOS}


def test_task_suite_shape() -> None:
    names = [s.name for s in TASK_SCENARIOS]
    assert len(names) == len(set(names))
    assert not set(names) & {s.name for s in SCENARIOS}, "names must stay unique once appended to SCENARIOS"
    for code in TASK_CODES:
        faulty = [s for s in TASK_SCENARIOS if s.primary == code]
        assert len(faulty) >= 2, code
        lookalikes = LOOKALIKES[code]
        assert len(lookalikes) >= 2 and all(BY_NAME[n].healthy for n in lookalikes), code
    holdout = sum(s.holdout for s in TASK_SCENARIOS) / len(TASK_SCENARIOS)
    assert 0.28 <= holdout <= 0.4
    assert any(s.holdout for s in TASK_SCENARIOS if s.healthy)
    assert any(s.holdout for s in TASK_SCENARIOS if not s.healthy)


@pytest.mark.parametrize("scenario", [pytest.param(s, id=s.name) for s in TASK_SCENARIOS])
def test_scenario_exhibits_its_fault(scenario: Scenario) -> None:
    result = scenario.run(0)
    assert isinstance(result, TaskRunResult) and len(result.probe)
    ok, evidence = scenario.check_exhibits(result)
    assert ok, f"{scenario.name}: {'does not train' if scenario.healthy else 'no longer shows its fault'} ({evidence})"
