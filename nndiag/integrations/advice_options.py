"""Construction-time validation of the adapters' advisor options (shared by the callback and Monitor).

Example:
    >>> from nndiag.integrations.advice_options import build_advice
    >>> build_advice(True, None, None, ()).advisor.config.dead_frac
    0.5
    >>> build_advice(True, None, None, ("nan_loss",))
    Traceback (most recent call last):
    ...
    ValueError: halt_on: unknown diagnosis code(s) nan_loss; valid codes: lr_too_high, ...
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nndiag.advice import AdvisorLoop
from nndiag.diagnosis import DIAGNOSIS_CODES
from nndiag.rules.config import AdvisorConfig

AdvisorConfigLike = AdvisorConfig | dict[str, Any] | str | Path | None


def advisor_config(value: AdvisorConfigLike) -> AdvisorConfig:
    """An :class:`AdvisorConfig` from an instance, a dict of thresholds, or a TOML/JSON file path."""
    if value is None:
        return AdvisorConfig()
    if isinstance(value, AdvisorConfig):
        return value
    if isinstance(value, dict):
        return AdvisorConfig.from_dict(value)
    if isinstance(value, (str, Path)):
        return AdvisorConfig.from_file(value)
    raise TypeError(
        f"advisor_config must be an nndiag AdvisorConfig, a dict of thresholds or a TOML/JSON file path, "
        f"got {type(value).__name__}."
    )


def halt_codes(halt_on: Iterable[str] | str) -> tuple[str, ...]:
    """Validated diagnosis codes that stop training."""
    codes = (halt_on,) if isinstance(halt_on, str) else tuple(halt_on)
    unknown = sorted(set(codes) - set(DIAGNOSIS_CODES))
    if unknown:
        raise ValueError(
            f"halt_on: unknown diagnosis code(s) {', '.join(unknown)}; valid codes: {', '.join(DIAGNOSIS_CODES)}."
        )
    return codes


def build_advice(
    diagnose: bool, config: AdvisorConfigLike, num_classes: int | None, halt_on: Iterable[str] | str
) -> AdvisorLoop | None:
    """The advisor loop for a session (``None`` when ``diagnose`` is False), validating every option."""
    codes = halt_codes(halt_on)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an int >= 2 (the classes of a softmax classifier), got {num_classes!r}.")
    cfg = advisor_config(config)
    if codes and not diagnose:
        raise ValueError("halt_on needs the advisors: do not combine it with diagnose=False.")
    if not diagnose:
        return None
    extra = {"num_classes": num_classes} if num_classes is not None else {}
    return AdvisorLoop(cfg, extra_facts=extra)
