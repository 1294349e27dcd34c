"""The adapters' shared options: one frozen, validated :class:`DiagnosticsOptions`.

``Monitor``, ``DiagnosticsCallback`` (and the other trainer adapters) take the same keyword
options; :meth:`DiagnosticsOptions.build` checks and coerces them once, at construction, with
messages that name the fix. The coercion helpers (advisor thresholds from a dict or a TOML/JSON
file, ``halt_on`` codes, recorder options) live here, below both ``integrations/`` and
``preflight/``, so that neither imports the other.

Example:
    >>> from nndiag.options import DiagnosticsOptions, build_config
    >>> opts = DiagnosticsOptions.build(schedule=5, halt_on="nonfinite_loss", histograms=True)
    >>> opts.halt_on, opts.config.histograms, opts.advisor_config.dead_frac
    (('nonfinite_loss',), True, 0.5)
    >>> DiagnosticsOptions.build(halt_on=("nan_loss",))
    Traceback (most recent call last):
    ...
    ValueError: halt_on: unknown diagnosis code(s) nan_loss; valid codes: ...
    >>> build_config(None, {"histogram": True})
    Traceback (most recent call last):
    ...
    TypeError: unknown nndiag option(s) histogram; valid options: histograms, histogram_bins, ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from nndiag.advice import AdvisorLoop
from nndiag.config import RecorderConfig
from nndiag.diagnosis import DIAGNOSIS_CODES
from nndiag.remedy.config import RemedyConfig, RemedyLike, remedy_config
from nndiag.rules.config import AdvisorConfig
from nndiag.schedule import Schedule, resolve_schedule

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


def check_num_classes(num_classes: int | None) -> int | None:
    """``num_classes`` if it is ``None`` or an int >= 2, else a ``ValueError``."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an int >= 2 (the classes of a softmax classifier), got {num_classes!r}.")
    return num_classes


def build_config(config: RecorderConfig | None, overrides: dict[str, Any]) -> RecorderConfig:
    """``config`` (or the defaults) with ``overrides`` applied; unknown names raise ``TypeError``."""
    if config is not None and not isinstance(config, RecorderConfig):
        raise TypeError(f"config must be an nndiag.RecorderConfig, got {type(config).__name__}.")
    names = [f.name for f in fields(RecorderConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"unknown nndiag option(s) {', '.join(unknown)}; valid options: {', '.join(names)}.")
    return replace(config or RecorderConfig(), **overrides)


def clean_hparams(hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """Hyperparameters as a flat JSON-safe dict: nested mappings become ``outer.inner`` keys.

    Numbers, strings, booleans and ``None`` are kept; anything else is stored as its ``repr``
    (an optimizer class, a tensor; cut to 200 characters) so that a run store never holds pickled objects.

    Example:
        >>> clean_hparams({"lr": 0.1, "opt": {"name": "adam", "betas": (0.9, 0.99)}, "act": int})
        {'lr': 0.1, 'opt.name': 'adam', 'opt.betas': '(0.9, 0.99)', 'act': "<class 'int'>"}
    """
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                visit(f"{prefix}.{k}" if prefix else str(k), v)
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            text = repr(value)
            flat[prefix] = text if len(text) <= 200 else text[:197] + "..."

    visit("", dict(hparams or {}))
    return flat


@dataclass(frozen=True)
class DiagnosticsOptions:
    """What every adapter (``Monitor``, ``DiagnosticsCallback``, ...) is configured with.

    Build it with :meth:`build` (which coerces and validates the user's values); the fields are
    then final.

    Attributes:
        schedule: which optimizer steps are logging steps (``None``: the built-in schedule, an int
            ``N``: every N-th step, or a callable ``step -> bool``).
        config: what the recorder measures and writes (:class:`~nndiag.RecorderConfig`; its
            ``report`` field decides the post-run report).
        diagnose: run the rule-based advisors during training.
        advisor_config: the advisors' thresholds.
        num_classes: classes of a softmax classifier (``None``: inferred from the model).
        halt_on: diagnosis codes that stop training cleanly.
        remedy: what nndiag may do to rescue a diverging run (``None``: nothing; docs/remedy.md).
    """

    schedule: Schedule = None  # None: every step for the first 20, every 10th until 200, then every 50th
    config: RecorderConfig = field(default_factory=RecorderConfig)  # the recorder's measurements and sinks
    diagnose: bool = True  # the advisors run unless switched off
    advisor_config: AdvisorConfig = field(default_factory=AdvisorConfig)  # the default thresholds
    num_classes: int | None = None  # inferred from the last linear layer when omitted
    halt_on: tuple[str, ...] = ()  # no diagnosis stops training unless asked
    remedy: RemedyConfig | None = None  # nndiag never acts on a run unless asked

    def __post_init__(self) -> None:
        resolve_schedule(self.schedule)
        if not isinstance(self.config, RecorderConfig):
            raise TypeError(f"config must be an nndiag.RecorderConfig, got {type(self.config).__name__}.")
        if not isinstance(self.advisor_config, AdvisorConfig):
            raise TypeError(
                f"advisor_config must be an nndiag AdvisorConfig, got {type(self.advisor_config).__name__}; "
                "use DiagnosticsOptions.build to pass a dict or a file."
            )
        check_num_classes(self.num_classes)
        halt_codes(self.halt_on)
        if self.halt_on and not self.diagnose:
            raise ValueError("halt_on needs the advisors: do not combine it with diagnose=False.")
        if self.remedy is not None and not isinstance(self.remedy, RemedyConfig):
            raise TypeError(f"remedy must be an nndiag RemedyConfig or None, got {type(self.remedy).__name__}.")
        if self.remedy is not None and not self.diagnose:
            raise ValueError("remedy needs the advisors: do not combine it with diagnose=False.")

    @classmethod
    def build(
        cls,
        schedule: Schedule = None,
        *,
        config: RecorderConfig | None = None,
        diagnose: bool = True,
        advisor_config: AdvisorConfigLike = None,
        num_classes: int | None = None,
        halt_on: Iterable[str] | str = (),
        remedy: RemedyLike = None,
        **recorder_options: Any,
    ) -> DiagnosticsOptions:
        """Options from the adapters' keyword arguments; ``recorder_options`` override ``config``'s fields."""
        resolve_schedule(schedule)  # the most common mistake first
        codes = halt_codes(halt_on)
        check_num_classes(num_classes)
        rescue = remedy_config(remedy)
        if rescue is not None and config is None and "full_every" not in recorder_options:
            # a rescue acts on the advisors' early word: update ratios at every logging step (lr spikes)
            recorder_options = {**recorder_options, "full_every": 1}
        return cls(
            schedule=schedule,
            config=build_config(config, recorder_options),
            diagnose=diagnose,
            advisor_config=advisor_config_of(advisor_config),
            num_classes=num_classes,
            halt_on=codes,
            remedy=rescue,
        )

    @property
    def report(self) -> bool:
        """Whether the post-run report is written (``report=`` option, else ``NNDIAG_REPORT``)."""
        return self.config.wants_report

    def advice(self) -> AdvisorLoop | None:
        """A fresh advisor loop for one run (``None`` when ``diagnose`` is False)."""
        if not self.diagnose:
            return None
        extra = {"num_classes": self.num_classes} if self.num_classes is not None else {}
        return AdvisorLoop(self.advisor_config, extra_facts=extra)


advisor_config_of = advisor_config  # the name used inside DiagnosticsOptions.build (a field shadows it)


def build_advice(
    diagnose: bool, config: AdvisorConfigLike, num_classes: int | None, halt_on: Iterable[str] | str
) -> AdvisorLoop | None:
    """The advisor loop for a session (``None`` when ``diagnose`` is False), validating every option."""
    codes = halt_codes(halt_on)
    check_num_classes(num_classes)
    cfg = advisor_config(config)
    if codes and not diagnose:
        raise ValueError("halt_on needs the advisors: do not combine it with diagnose=False.")
    return DiagnosticsOptions(diagnose=diagnose, advisor_config=cfg, num_classes=num_classes, halt_on=codes).advice()


__all__ = [
    "AdvisorConfigLike",
    "DiagnosticsOptions",
    "advisor_config",
    "build_advice",
    "build_config",
    "check_num_classes",
    "clean_hparams",
    "halt_codes",
]
