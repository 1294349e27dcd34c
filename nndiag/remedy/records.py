"""``Remedy``: one thing the remedy did, and the ``remedied`` diagnosis that reports them.

Example:
    >>> from nndiag.remedy.records import Remedy, remedied_diagnosis
    >>> r = Remedy("rollback", step=57, good_step=40, reason="loss_diverging at step 52", lr_factor=0.1,
    ...            lrs=[0.01], attempt=1)
    >>> r.describe().split("; ")[1:]
    ['learning rate cut to 0.1x (now 0.01)', 'attempt 1']
    >>> Remedy.from_dict(r.to_dict()) == r
    True
    >>> remedied_diagnosis([r], max_attempts=3).evidence["rollbacks"]
    1.0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from nndiag.diagnosis import Diagnosis

Action = Literal["rollback", "skip", "halt"]


@dataclass(frozen=True)
class Remedy:
    """One action: ``rollback`` (restore + cool down), ``skip`` (a NaN/Inf batch made no update) or ``halt``.

    Attributes:
        action: what was done.
        step: the optimizer step at which it was done (a skip: the skipped step).
        good_step: a rollback: the step whose state was restored (the run continues from it).
        reason: the diagnosis (code and onset) or event that triggered it.
        lr_factor: the learning-rate factor in force afterwards (product of every cut so far).
        lrs: the learning rates every parameter group uses afterwards (the schedule's times the factor).
        attempt: the rollback's number (``halt``: the attempts made).
    """

    action: Action
    step: int
    good_step: int | None = None
    reason: str = ""
    lr_factor: float = 1.0
    lrs: list[float] = field(default_factory=list)
    attempt: int = 0

    def describe(self) -> str:
        """One phrase: what, when, from where, the new learning rate."""
        if self.action == "skip":
            return f"skipped the batch of step {self.step} ({self.reason}): no update from it"
        if self.action == "halt":
            return f"stopped training at step {self.step} after {self.attempt} rollback(s): {self.reason}"
        lrs = ", ".join(f"{lr:.3g}" for lr in self.lrs)
        return (
            f"rolled back at step {self.step} to the good state of step {self.good_step} ({self.reason}); "
            f"learning rate cut to {self.lr_factor:.3g}x (now {lrs}); attempt {self.attempt}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (checkpoints, JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Remedy:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def remedied_diagnosis(remedies: list[Remedy], max_attempts: int) -> Diagnosis:
    """The one run-wide ``remedied`` diagnosis summarising every action so far (the latest in full)."""
    last = remedies[-1]
    rollbacks = [r for r in remedies if r.action == "rollback"]
    skips = [r for r in remedies if r.action == "skip"]
    parts = []
    if rollbacks:
        parts.append(f"{len(rollbacks)} rollback(s) of {max_attempts} allowed")
    if skips:
        parts.append(f"{len(skips)} NaN/Inf batch(es) skipped")
    message = f"nndiag {last.describe()} ({'; '.join(parts)})."
    evidence: dict[str, float] = {
        "rollbacks": float(len(rollbacks)),
        "skipped_batches": float(len(skips)),
        "lr_factor": float(last.lr_factor),
        "halted": float(any(r.action == "halt" for r in remedies)),
    }
    if rollbacks:
        evidence["last_rollback_step"] = float(rollbacks[-1].step)
        evidence["good_step"] = float(rollbacks[-1].good_step or 0)
        if rollbacks[-1].lrs:
            evidence["lr"] = float(rollbacks[-1].lrs[0])
    suggestions = []
    if rollbacks:
        suggestions.append(
            f"Train with the learning rate the remedy settled on ({last.lr_factor:.3g}x yours) or add warmup / "
            "gradient clipping, so that the run does not need rescuing."
        )
    if skips:
        suggestions.append("Find the NaN/Inf batches in the data pipeline (cb.remedies lists the skipped steps).")
    return Diagnosis(
        code="remedied",
        severity="info",
        step=remedies[0].step,
        layer=None,
        message=message,
        evidence=evidence,
        suggestions=suggestions,
        last_step=last.step,
        count=len(remedies),
    )
