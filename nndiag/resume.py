"""Resuming a run from a checkpoint: the step count (schedule position), open diagnoses and the run store.

The Lightning callback saves :meth:`ResumeState.to_state_dict` in every checkpoint
(``state_dict``) and reads it back on ``Trainer.fit(ckpt_path=...)`` (``load_state_dict``);
plain loops pass ``Monitor.state_dict()`` to ``Monitor(..., resume=state)``. On resume:

* step numbering (and so the logging schedule) continues from the saved step;
* the open diagnoses are restored (so ``halt_on`` and the summary know them) and resolve
  normally if the problem is gone;
* the run store continues the *same run* when its directory still holds it: the earlier
  history is read back into memory (bounded by ``memory_rows``), so the rules see the run from
  step 0, and new rows are appended. Elsewhere (another machine), a new store is started whose
  metadata records ``resumed_from``. A resumed run never re-reads its initial weights as
  "initialisation": the original run's are kept, or none are used.

Example:
    >>> from nndiag.resume import ResumeState
    >>> state = ResumeState(step=120, run_dir="runs/version_0").to_state_dict()
    >>> ResumeState.from_state_dict(state).step
    120
    >>> ResumeState.from_state_dict({"step": -1})
    Traceback (most recent call last):
    ...
    ValueError: the checkpoint's callback state has no valid step (got -1)

"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nndiag.diagnosis import Diagnosis

STATE_VERSION = 2
STORE_NAME = "nndiag.sqlite"


@dataclass(frozen=True)
class ResumeState:
    """What a checkpoint keeps of nndiag: the step reached, the run's directory, the open diagnoses."""

    step: int = 0
    run_dir: str | None = None
    diagnoses: list[Diagnosis] = field(default_factory=list)

    def to_state_dict(self) -> dict[str, Any]:
        """Plain data (ints, strings, dicts) for a checkpoint."""
        return {
            "nndiag_state_version": STATE_VERSION,
            "step": self.step,
            "run_dir": self.run_dir,
            "diagnoses": [d.to_dict() for d in self.diagnoses],
        }

    @classmethod
    def from_state_dict(cls, state: Any) -> ResumeState:
        """Validate a saved state (version 1 had the step only).

        Raises:
            ValueError: the state is not one nndiag wrote (the caller warns and ignores it).
        """
        if not isinstance(state, dict):
            raise ValueError(f"the checkpoint's callback state is a {type(state).__name__}, not a dict")
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"the checkpoint's callback state has no valid step (got {step!r})")
        run_dir = state.get("run_dir")
        diagnoses = []
        for item in state.get("diagnoses") or []:
            try:
                diagnoses.append(Diagnosis.from_dict(item))
            except (TypeError, ValueError):
                continue  # a diagnosis of an unknown shape is dropped, the rest is kept
        return cls(step=step, run_dir=run_dir if isinstance(run_dir, str) else None, diagnoses=diagnoses)

    def continued_dir(self) -> Path | None:
        """The saved run directory if it still holds a run store to continue, else ``None``."""
        if not self.run_dir:
            return None
        path = Path(self.run_dir)
        return path if (path / STORE_NAME).is_file() else None
