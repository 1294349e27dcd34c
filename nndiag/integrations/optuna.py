"""Optuna integration: end trials whose training nndiag diagnoses as broken (``pip install nndiag[optuna]``).

The coarse stage of a coarse-to-fine search kills the settings that explode; this does it
automatically. :class:`DiagnosisPruning` wraps one trial and the :class:`~nndiag.Monitor` (or
:class:`~nndiag.DiagnosticsCallback`) that watches its training. Each ``report(value, step)``
reports the value to Optuna and prunes the trial (``optuna.TrialPruned``) when

* the value is NaN or infinite, or
* an open diagnosis with a code in ``codes`` holds (default :data:`PRUNE_CODES`:
  ``nonfinite_loss``, ``loss_diverging``, ``lr_too_high``: the error-severity verdicts that the
  run is broken, not merely impaired), or
* the study's own pruner (e.g. ``MedianPruner``) says so.

Warnings such as ``dead_units``, ``loss_not_decreasing`` or ``overfitting`` must not prune: they
describe runs that still produce a meaningful (if worse) objective, may resolve later, and pruning
on them would bias the search towards what the advisors like instead of what the objective says.

Trial user attributes set (read back by ``nndiag sweep``):
    * ``nndiag_diagnoses``: sorted codes of every diagnosis of the run (any severity, open or resolved);
    * ``nndiag_log_dir``: the run's log directory (its ``nndiag.sqlite``), when it has one;
    * ``nndiag_pruned``: the reason, as :meth:`nndiag.Diagnosis.one_line`, when nndiag pruned it.

Timing: nndiag's advisors run on a background thread (every ~5 s or 20 logging steps, at once on
the first non-finite loss), so when the loop reports an epoch the latest check may be seconds old:
a one-epoch coarse trial could finish before its divergence is diagnosed. So before deciding,
``report`` waits until the writer has processed everything handed to it (the writer's ``drain``)
and, when the background diagnoses give no reason, evaluates the same rules once more on the
current history (``recheck=True``; the cost of one advisor check, milliseconds for small runs,
once per report).

Example:
    >>> import optuna, torch
    >>> from nndiag import Monitor
    >>> from nndiag.integrations.optuna import DiagnosisPruning
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> def objective(trial):
    ...     model = torch.nn.Linear(4, 1)
    ...     opt = torch.optim.SGD(model.parameters(), lr=trial.suggest_float("lr", 1e-3, 1e-1, log=True))
    ...     mon = Monitor(model, opt, log_dir=None, hparams=trial.params)
    ...     with DiagnosisPruning(trial, mon) as pruning, mon:
    ...         for epoch in range(2):
    ...             loss = model(torch.randn(8, 4)).pow(2).mean()
    ...             loss.backward(); opt.step(); opt.zero_grad(); mon.step(loss)
    ...             pruning.report(loss.item(), epoch)
    ...     return loss.item()
    >>> study = optuna.create_study()
    >>> study.optimize(objective, n_trials=2)
    >>> len(study.trials), "nndiag_diagnoses" in study.trials[0].user_attrs
    (2, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from nndiag.advisor import BROKEN_CODES, Advisor
from nndiag.diagnosis import Diagnosis
from nndiag.facts import ModelFacts
from nndiag.options import halt_codes
from nndiag.rules.view import RunView

try:
    import optuna
except ImportError as _exc:  # pragma: no cover - exercised only without optuna
    raise ImportError(
        "nndiag.integrations.optuna needs optuna: pip install nndiag[optuna] (or pip install optuna)."
    ) from _exc

__all__ = ["PRUNE_CODES", "DiagnosisPruning", "PruningCallback", "current_diagnoses", "prune_reason"]  # noqa: F822 (lazy, see __getattr__)

# error-severity verdicts that the training is broken: its objective would not be a result
PRUNE_CODES: tuple[str, ...] = BROKEN_CODES  # the rule registry's "this run is broken" codes


def _settle(source: Any) -> None:
    """Wait until nndiag has processed what the training handed it (see the module docstring)."""
    session = getattr(source, "session", None)
    if session is None or getattr(session, "closed", True):
        return
    pipeline = getattr(session, "pipeline", None)
    if pipeline is not None:
        pipeline.drain()


def _diagnoses(source: Any) -> list[Diagnosis]:
    return list(getattr(source, "diagnoses", None) or [])


def _first_open(diagnoses: list[Diagnosis], codes: tuple[str, ...]) -> Diagnosis | None:
    for code in codes:  # in the caller's order of importance
        hit = next((d for d in diagnoses if d.code == code and not d.resolved), None)
        if hit is not None:
            return hit
    return None


def current_diagnoses(source: Any) -> list[Diagnosis]:
    """What nndiag's rules say about the training right now: one advisor evaluation on the current history.

    Uses the source's advisor thresholds and facts; empty when the source records nothing yet.
    """
    session = getattr(source, "session", None)
    if session is None:
        return []
    history = source.history
    if history.empty:
        return []
    advice = getattr(session, "advice", None)
    config = advice.advisor.config if advice is not None else None
    facts = session.model_facts or ModelFacts()
    if advice is not None:
        facts = advice.with_extra(facts)  # the user's num_classes
    return list(Advisor(config).evaluate(RunView(history, facts)).values())


def prune_reason(source: Any, codes: Iterable[str] = PRUNE_CODES, recheck: bool = True) -> Diagnosis | None:
    """The diagnosis to prune on (the first open one with a code in ``codes``), else ``None``.

    ``source`` is a :class:`~nndiag.Monitor` or a :class:`~nndiag.DiagnosticsCallback`; with ``recheck``
    the rules are evaluated once more on the current history when the background diagnoses give no reason.
    """
    wanted = halt_codes(tuple(codes))
    _settle(source)
    hit = _first_open(_diagnoses(source), wanted)
    if hit is None and recheck:
        hit = _first_open(current_diagnoses(source), wanted)
    return hit


class DiagnosisPruning:
    """Prunes one Optuna trial when nndiag diagnoses its training as broken.

    Args:
        trial: the ``optuna.Trial`` being run.
        source: the :class:`~nndiag.Monitor` or :class:`~nndiag.DiagnosticsCallback` of its training
            (may be set later with :attr:`source`, e.g. by :class:`PruningCallback`).
        codes: diagnosis codes that prune (default :data:`PRUNE_CODES`); ``()`` only records diagnoses.
        recheck: evaluate the rules on the current history at each report when the background
            diagnoses give no reason (see the module docstring).

    Use it as a context manager around the training (with the Monitor's own ``with`` inside, so that
    the diagnoses of the final check are recorded too).
    """

    def __init__(
        self, trial: Any, source: Any = None, codes: Iterable[str] = PRUNE_CODES, recheck: bool = True
    ) -> None:
        self.trial = trial
        self.source = source
        self.codes = halt_codes(tuple(codes))
        self.recheck = recheck
        self.reason: str | None = None
        self._seen: set[str] = set()  # codes found by prune-time rechecks

    def record(self) -> None:
        """Store the run's diagnosis codes and log directory in the trial's user attributes."""
        if self.source is None:
            return
        codes = {d.code for d in _diagnoses(self.source)} | self._seen
        self.trial.set_user_attr("nndiag_diagnoses", sorted(codes))
        log_dir = getattr(self.source, "log_dir", None)
        if log_dir:
            self.trial.set_user_attr("nndiag_log_dir", str(log_dir))

    def check(self, value: float | None = None, step: int | None = None) -> str | None:
        """Why the trial should be pruned now (a non-finite ``value`` or a broken-run diagnosis), else ``None``."""
        if value is not None and not math.isfinite(value):
            return f"the reported value is {value} at step {step}"
        if self.source is None or not self.codes:
            return None
        hit = prune_reason(self.source, self.codes, self.recheck)
        if hit is None:
            return None
        self._seen.add(hit.code)
        return hit.one_line()

    def prune(self, reason: str) -> None:
        """Record ``reason`` and raise ``optuna.TrialPruned``."""
        self.reason = reason
        self.record()
        self.trial.set_user_attr("nndiag_pruned", reason)
        raise optuna.TrialPruned(f"nndiag: {reason}")

    def report(self, value: float, step: int) -> None:
        """``trial.report(value, step)``, then prune if the training is broken or the study's pruner says so."""
        value = float(value)
        if math.isfinite(value):
            self.trial.report(value, step)
        reason = self.check(value, step)
        if reason is not None:
            self.prune(reason)
        self.record()
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned by the study's pruner at step {step}")

    def __enter__(self) -> DiagnosisPruning:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.record()


def _callback_class() -> type:
    from nndiag.integrations.lightning import _callback_bases

    class _PruningCallback(*_callback_bases()):  # type: ignore[misc]
        """Lightning: report ``monitor`` after each validation and prune broken trials.

        Args:
            trial: the ``optuna.Trial``.
            monitor: the ``self.log`` name of the value to report (e.g. ``"val_loss"``).
            codes: diagnosis codes that prune (default :data:`PRUNE_CODES`).

        Needs a :class:`~nndiag.DiagnosticsCallback` in the same ``Trainer`` (found automatically).
        ``optuna.TrialPruned`` is raised from the hook, ending ``trainer.fit`` (as Optuna's own
        Lightning callback does); ``pruning.reason`` holds nndiag's reason.
        """

        def __init__(self, trial: Any, monitor: str = "val_loss", codes: Iterable[str] = PRUNE_CODES) -> None:
            self.pruning = DiagnosisPruning(trial, None, codes)
            self.monitor = monitor

        def _attach(self, trainer: Any) -> None:
            if self.pruning.source is None:
                found = [c for c in trainer.callbacks if hasattr(c, "halt_on") and hasattr(c, "diagnoses")]
                if not found:
                    raise ValueError(
                        "PruningCallback needs nndiag's DiagnosticsCallback in the same Trainer: "
                        "Trainer(callbacks=[DiagnosticsCallback(), PruningCallback(trial)])."
                    )
                self.pruning.source = found[0]

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self._attach(trainer)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if getattr(trainer, "sanity_checking", False):
                return
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                raise ValueError(
                    f"PruningCallback: {self.monitor!r} was not logged; log it with self.log({self.monitor!r}, ...) "
                    f"or pass monitor= one of {sorted(trainer.callback_metrics)}."
                )
            self.pruning.report(float(value), int(trainer.current_epoch))

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            self.pruning.record()

    _PruningCallback.__name__ = _PruningCallback.__qualname__ = "PruningCallback"
    return _PruningCallback


def __getattr__(name: str) -> Any:
    # the Lightning callback is built on first use: importing Lightning takes seconds
    if name == "PruningCallback":
        cls = _callback_class()
        globals()["PruningCallback"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
