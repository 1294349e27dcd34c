"""The whole calibration suite: the textbook faults (``scenarios``) and the task faults (``task_scenarios``)."""

from __future__ import annotations

from faults.scenarios import SCENARIOS as CORE_SCENARIOS
from faults.scenarios import Scenario
from faults.task_scenarios import TASK_SCENARIOS

SCENARIOS: list[Scenario] = [*CORE_SCENARIOS, *TASK_SCENARIOS]
TASK_NAMES = frozenset(s.name for s in TASK_SCENARIOS)

__all__ = ["CORE_SCENARIOS", "SCENARIOS", "TASK_NAMES", "TASK_SCENARIOS"]
