"""``RemedyConfig``: what nndiag may do to rescue a diverging run, and when.

``remedy=True`` (on ``DiagnosticsCallback``, ``Monitor`` and the Hugging Face ``NndiagCallback``)
means ``RemedyConfig()``; a dict is read as its fields. Off by default.

Example:
    >>> from nndiag.remedy.config import RemedyConfig, remedy_config
    >>> cfg = remedy_config(True)
    >>> cfg.on, cfg.lr_factor, cfg.max_attempts
    (('nonfinite_loss', 'loss_diverging', 'lr_too_high'), 0.1, 3)
    >>> remedy_config({"lr_factor": 0.5}).lr_factor
    0.5
    >>> remedy_config(None) is None, remedy_config(False) is None
    (True, True)
    >>> RemedyConfig(lr_factor=2.0)
    Traceback (most recent call last):
    ...
    ValueError: RemedyConfig.lr_factor must be in (0, 1] (0.1 cuts the learning rate 10x), got 2.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import nndiag.rules  # noqa: F401  (registers every code, so that ``on`` can be checked)
from nndiag.diagnosis import DIAGNOSIS_CODES

DEFAULT_CODES = ("nonfinite_loss", "loss_diverging", "lr_too_high")


@dataclass(frozen=True)
class RemedyConfig:
    """What the remedy does when one of ``on`` holds: roll back, cool down, skip; after ``max_attempts``, halt.

    Attributes:
        on: diagnosis codes that trigger a rollback.
        lr_factor: every parameter group's learning rate is multiplied by this at each rollback
            (kept as a factor on top of any scheduler, so the cut persists).
        restore: restore the last good state (weights and optimizer state) at a rollback.
        skip_nonfinite: skip (no update from) an optimizer step whose gradients hold NaN/Inf, i.e. a
            batch whose input or loss is NaN/Inf; costs one device reduction and one host sync per step.
        skip_limit: that many skipped steps in a row count as a divergence (rollback).
        max_attempts: rollbacks before the run is halted with the reason; the count restarts after
            ``10 * keep_every`` healthy steps since the last rollback with a good state confirmed in them.
        keep_every: optimizer steps between good-state copies.
        confirm_steps: a copy becomes *the* good state once the advisors checked this many steps past it
            and found none of ``on`` holding.
        sync_every: under ``torch.distributed``, rank 0's decision is broadcast every this many steps.
        device: where good states are kept (``"cpu"``: host memory).
    """

    on: tuple[str, ...] = DEFAULT_CODES  # the divergence diagnoses
    lr_factor: float = 0.1  # a 10x cut per rollback
    restore: bool = True  # roll back to the last good state
    skip_nonfinite: bool = True  # a NaN/Inf batch makes no update
    skip_limit: int = 3  # three NaN/Inf steps in a row: the weights are broken, roll back
    max_attempts: int = 3  # then halt with the reason
    keep_every: int = 50  # optimizer steps between good-state copies
    confirm_steps: int = 10  # a copy is trusted once the advisors saw 10 healthy steps after it
    sync_every: int = 10  # distributed: one small broadcast every 10 optimizer steps
    device: str = "cpu"  # good states in host memory

    def __post_init__(self) -> None:
        codes = (self.on,) if isinstance(self.on, str) else tuple(self.on)
        object.__setattr__(self, "on", codes)
        unknown = sorted(set(codes) - set(DIAGNOSIS_CODES))
        if unknown:
            raise ValueError(
                f"RemedyConfig.on: unknown diagnosis code(s) {', '.join(unknown)}; "
                f"valid codes: {', '.join(DIAGNOSIS_CODES)}."
            )
        if not (isinstance(self.lr_factor, (int, float)) and 0 < self.lr_factor <= 1):
            raise ValueError(
                f"RemedyConfig.lr_factor must be in (0, 1] (0.1 cuts the learning rate 10x), got {self.lr_factor!r}."
            )
        for name in ("skip_limit", "max_attempts", "keep_every", "sync_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RemedyConfig.{name} must be an int >= 1, got {value!r}.")
        if isinstance(self.confirm_steps, bool) or not isinstance(self.confirm_steps, int) or self.confirm_steps < 0:
            raise ValueError(f"RemedyConfig.confirm_steps must be an int >= 0, got {self.confirm_steps!r}.")
        if not isinstance(self.device, str):
            raise TypeError(f"RemedyConfig.device must be a device name such as 'cpu', got {self.device!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints and the run's metadata)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


RemedyLike = RemedyConfig | bool | Mapping[str, Any] | None


def remedy_config(value: RemedyLike) -> RemedyConfig | None:
    """``None`` (off) for ``None``/``False``; the defaults for ``True``; a dict's fields; a config as is."""
    if value is None or value is False:
        return None
    if value is True:
        return RemedyConfig()
    if isinstance(value, RemedyConfig):
        return value
    if isinstance(value, Mapping):
        names = {f.name for f in fields(RemedyConfig)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise TypeError(
                f"unknown remedy option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(names))}."
            )
        data = dict(value)
        if "on" in data and not isinstance(data["on"], str):
            data["on"] = tuple(data["on"])
        return RemedyConfig(**data)
    raise TypeError(
        f"remedy must be True/False, an nndiag.RemedyConfig or a dict of its fields, got {type(value).__name__}."
    )
