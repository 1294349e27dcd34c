"""The task-level calibration scenarios (issue 15): their shape, and that each run shows its fault.

Whether each run exhibits its fault in the harness's own measurements (``check_exhibits``), and
whether nndiag names it, is checked per scenario by ``tests/test_fault_injection.py`` (the task
scenarios are part of ``faults.suite.SCENARIOS``).
"""

from __future__ import annotations

import pytest
from faults.scenarios import SCENARIOS
from faults.task_scenarios import LOOKALIKES, TASK_CODES, TASK_SCENARIOS

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
