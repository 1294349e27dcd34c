"""``AdvisorConfig``: every rule's thresholds in one typed, validated, flat object.

Each rule declares its thresholds as a small frozen dataclass next to the rule (with a comment
giving the source of each default; see ``docs/rules.md``); thresholds that several rules read
(the loss-curve smoothing, ``sustained_checks``, ...) live in shared base dataclasses. The
config is composed from all registered rules' dataclasses, so its names are flat and stable:
``AdvisorConfig(dead_frac=0.7)``, ``AdvisorConfig.from_dict({...})`` and TOML/JSON files (under
``[advisor]`` or top level) use the field names. :meth:`AdvisorConfig.thresholds` hands a rule
its own dataclass, filled from the config.

Example:
    >>> from nndiag.rules.config import AdvisorConfig
    >>> cfg = AdvisorConfig()
    >>> cfg.dead_frac
    0.5
    >>> AdvisorConfig.from_dict({"dead_frac": 0.7}).dead_frac
    0.7
    >>> AdvisorConfig.from_dict({"dead_fraction": 0.7})
    Traceback (most recent call last):
    ...
    ValueError: unknown advisor threshold(s) dead_fraction; see nndiag.rules.config.AdvisorConfig for the names.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import FrozenInstanceError, fields
from pathlib import Path
from typing import Any, TypeVar

from nndiag.rules.registry import threshold_defaults

T = TypeVar("T")


class AdvisorConfig:
    """Thresholds of the rule-based advisors: the registered rules' threshold dataclasses, flattened.

    Args:
        **overrides: threshold values by name (every other threshold keeps its default).

    Raises:
        ValueError: an unknown name, or a value that is not a positive number (an integer where the
            threshold is one).
    """

    __slots__ = ("_by_class", "_values")

    def __init__(self, **overrides: Any) -> None:
        defaults = threshold_defaults()
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise ValueError(
                f"unknown advisor threshold(s) {', '.join(unknown)}; "
                "see nndiag.rules.config.AdvisorConfig for the names."
            )
        values = {name: overrides.get(name, default) for name, (default, _) in defaults.items()}
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"advisor threshold {name} must be a positive number, got {value!r}.")
            if defaults[name][1] in ("int", int) and not isinstance(value, int):
                raise ValueError(f"advisor threshold {name} must be an integer, got {value!r}.")
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_by_class", {})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"AdvisorConfig has no threshold {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AdvisorConfig) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self) -> str:
        return "AdvisorConfig(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._values})

    def thresholds(self, cls: type[T]) -> T:
        """The rule thresholds dataclass ``cls``, filled from this config (cached per class).

        Example:
            >>> from nndiag.rules.activations import DeadUnitsThresholds
            >>> AdvisorConfig(dead_frac=0.7).thresholds(DeadUnitsThresholds).dead_frac
            0.7
        """
        cached = self._by_class.get(cls)
        if cached is None:
            cached = cls(**{f.name: self._values[f.name] for f in fields(cls)})  # type: ignore[arg-type]
            self._by_class[cls] = cached
        return cached

    def replace(self, **changes: Any) -> AdvisorConfig:
        """A copy with some thresholds changed (``dataclasses.replace`` for the composed config).

        Example:
            >>> AdvisorConfig().replace(sustained_checks=1).sustained_checks
            1
        """
        return AdvisorConfig(**{**self._values, **changes})

    def to_dict(self) -> dict[str, Any]:
        """All thresholds by name."""
        return dict(self._values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdvisorConfig:
        """Defaults with the given thresholds overridden; unknown names raise ``ValueError``."""
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> AdvisorConfig:
        """Read thresholds from a TOML (optionally under ``[advisor]``) or JSON file."""
        p = Path(path)
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        if "advisor" in data and isinstance(data["advisor"], dict):
            data = data["advisor"]
        return cls.from_dict(data)
