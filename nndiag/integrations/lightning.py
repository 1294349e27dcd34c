"""``DiagnosticsCallback``: the Lightning adapter (works with ``lightning.pytorch`` and ``pytorch_lightning``).

The class derives from the ``Callback`` base of every Lightning package that is
installed, so the same object is accepted by ``lightning.pytorch.Trainer`` and by
``pytorch_lightning.Trainer``.

Logged metrics (through the trainer's ``TensorBoardLogger``, else nndiag's own writer
in ``trainer.log_dir``):
    * ``nndiag/<stat>/<layer>`` for act_mean, act_std, dead_frac, sat_frac, nonfinite
      (per recorded module and the model ``input``), grad_norm, weight_norm,
      update_ratio (per parameter tensor) and lr (per optimizer / parameter group);
    * ``nndiag/loss`` and ``nndiag/grad_norm_total``;
    * ``nndiag/act_hist/<layer>`` when ``histograms=True``;
    * ``nndiag/diagnoses``: Markdown table of diagnoses.

The run store ``nndiag.sqlite`` is written to ``trainer.log_dir``.

Example:
    >>> from nndiag import DiagnosticsCallback
    >>> cb = DiagnosticsCallback(schedule=1)
    >>> cb.history.empty, cb.diagnoses
    (True, [])

"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
from typing_extensions import override

from nndiag import quantities as Q
from nndiag.collect.distributed import agree
from nndiag.collect.task_probe import batch_target
from nndiag.config import RecorderConfig
from nndiag.diagnosis import Diagnosis
from nndiag.guard import ErrorGuard, NndiagInternalWarning
from nndiag.integrations.lightning_trainer import (
    VAL_LOSS_KEYS,
    callback_bases,
    framework_of,
    tensorboard_writer,
    user_loss,
)
from nndiag.log import get_logger
from nndiag.options import AdvisorConfigLike, DiagnosticsOptions, clean_hparams
from nndiag.remedy import Remedy, RemedyLike, RemedyRunner, saved_state, with_state
from nndiag.report.auto import write_after_run
from nndiag.resume import ResumeState
from nndiag.schedule import Schedule
from nndiag.session import Session
from nndiag.sinks.memory import MemoryHistory

if TYPE_CHECKING:
    from lightning.pytorch import Callback as _LightningCallback
    from pytorch_lightning import Callback as _PLCallback
else:
    try:
        from lightning.pytorch import Callback as _LightningCallback
    except ImportError:  # not installed: a placeholder base that adds nothing

        class _LightningCallback:
            pass

    try:
        from pytorch_lightning import Callback as _PLCallback
    except ImportError:

        class _PLCallback:
            pass


_callback_bases = callback_bases  # the name nndiag.integrations.optuna uses
_callback_bases()  # without Lightning, importing this module fails with a message saying what to install


# the two packages type their hooks with their own Trainer / LightningModule classes: mypy sees them as conflicting
class DiagnosticsCallback(_LightningCallback, _PLCallback):  # type: ignore[misc]
    """Records per-layer training statistics in a Lightning ``Trainer``.

    Args:
    schedule: which optimizer steps are logging steps: ``None`` for the built-in schedule
        (every step for the first 20, every 10th until step 200, then every 50th), an int
        ``N`` for every N-th step, or a callable ``step -> bool``.
    config: a :class:`~nndiag.RecorderConfig`; keyword options override its fields
        (``histograms=True``, ``update_ratio="sampled"``, ...).
    diagnose: run the rule-based advisors (default True); diagnoses appear in ``diagnoses``, TensorBoard
        (``nndiag/diagnoses``), the run store and the ``nndiag`` logger, with a summary at the end of fit.
    advisor_config: thresholds: an :class:`~nndiag.AdvisorConfig`, a dict, or a TOML/JSON file.
    num_classes: classes of a softmax classifier (for ``initial_loss_off``; inferred when omitted).
    halt_on: diagnosis codes that stop training cleanly (like EarlyStopping), e.g.
        ``("nonfinite_loss", "loss_diverging")``; the reason is in ``stop_reason`` and the log.
    remedy: ``True`` or a :class:`~nndiag.RemedyConfig`: on divergence roll back to a good state and cut
        the learning rate, skip NaN/Inf batches; what it did is in ``remedies`` (docs/remedy.md). Off by default.
    preflight: run :func:`nndiag.preflight` on the first training batch when training starts (rank 0):
        the per-layer table and what the initialised network already shows, logged on the ``nndiag``
        logger, the report in ``preflight_report``. ``True``, or a dict of options (``loss_fn``,
        ``overfit``, ``lr_find``, ...; without ``loss_fn`` no initial-loss or overfit check). Default off.
    report: write ``nndiag-report.{html,md,json}`` into the run directory at the end (default: on,
        unless the environment sets ``NNDIAG_REPORT=0``).
    val_loss_key: the ``self.log`` name of your validation loss; by default the first of
        ``val_loss``, ``val/loss``, ``valid_loss``, ``validation_loss``, ``val_loss_epoch``,
        ``loss/val`` found in ``trainer.callback_metrics`` at the end of each validation epoch
        is recorded as the run-wide stat ``val_loss``.

    Attributes:
    history: pandas DataFrame (step, layer, stat, value).
    diagnoses: list of :class:`~nndiag.Diagnosis`.

    Example:
    >>> from nndiag import DiagnosticsCallback
    >>> DiagnosticsCallback(schedule=0)
    Traceback (most recent call last):
    ...
    ValueError: schedule must be None (built-in), a positive int ... got 0. Use schedule=1 to log every step.
    """

    def __init__(
        self,
        schedule: Schedule = None,
        *,
        config: RecorderConfig | None = None,
        val_loss_key: str | None = None,
        diagnose: bool = True,
        advisor_config: AdvisorConfigLike = None,
        num_classes: int | None = None,
        halt_on: Iterable[str] | str = (),
        preflight: bool | Mapping[str, Any] = False,
        remedy: RemedyLike = None,
        **options: Any,
    ) -> None:
        # validated now: a clear error at construction, not when training starts
        self.options = DiagnosticsOptions.build(
            schedule,
            config=config,
            diagnose=diagnose,
            advisor_config=advisor_config,
            num_classes=num_classes,
            halt_on=halt_on,
            remedy=remedy,
            **options,
        )
        self.remedy: RemedyRunner | None = None  # the running fit's remedy (with ``remedy``)
        self._remedy_state: dict[str, Any] | None = None  # from a checkpoint, for the next fit
        if not isinstance(preflight, (bool, Mapping)):
            raise TypeError(
                f"preflight must be True/False or a dict of nndiag.preflight options (loss_fn, num_classes, overfit, "
                f"lr_find), got {type(preflight).__name__}."
            )
        self.preflight = preflight
        self.preflight_report: Any = None  # the PreflightReport of the last fit when preflight is on
        self.schedule = schedule
        self.val_loss_key = val_loss_key
        self._advice_args = (diagnose, advisor_config, num_classes, halt_on)  # as given (options: as coerced)
        self.halt_on = self.options.halt_on
        self.stop_reason: str | None = None
        self.config = self.options.config
        self.guard = ErrorGuard()
        self.session: Session | None = None
        self._resume: ResumeState | None = None  # set by load_state_dict (resume), used by the next fit
        self._previous: tuple[str, int] | None = None  # (log dir, steps) of the last fit
        self._empty = MemoryHistory()
        self.diagnoses: list[Diagnosis] = []

    # -- results ---------------------------------------------------------------------
    @property
    def history(self) -> pd.DataFrame:
        """Recorded statistics: long-format DataFrame with columns step, layer, stat, value."""
        return self._empty.frame() if self.session is None else self.session.history

    @property
    def remedies(self) -> list[Remedy]:
        """What the remedy did (rollbacks, skipped batches, a halt), in order; empty without ``remedy``."""
        return [] if self.remedy is None else list(self.remedy.remedies)

    @property
    def log_dir(self) -> str | None:
        """Where the run store and (without a TensorBoard logger) the event files are written."""
        if self.session is None or self.session.log_dir is None:
            return None
        return str(self.session.log_dir)

    # -- the wrong trainer: Hugging Face calls on_init_end (or on_train_begin when added later) --
    def on_init_end(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "nndiag.DiagnosticsCallback is a Lightning callback; for a Hugging Face Trainer use "
            "nndiag.integrations.transformers.NndiagCallback."
        )

    on_train_begin = on_init_end

    # -- Lightning hooks -------------------------------------------------------------
    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.guard.run("callback start", self._start, trainer, pl_module)
        if self.config.distributed:
            self._agree_on_start()

    def _agree_on_start(self) -> None:
        """Distributed: every rank set up, or none combines (a collective no rank may skip)."""
        started = self.session is not None and not self.session.closed
        if not agree(started) and started:
            assert self.session is not None
            self.session.combiner.broken = True
            if self.session.combiner.writer:
                get_logger().warning("nndiag: a rank failed to start recording; rank 0 records its own batch only.")

    def _start(self, trainer: Any, pl_module: Any) -> None:
        if self.session is not None and not self.session.closed:
            self.session.close()
        # every rank records (DDP/FSDP: statistics are combined at each logging step); rank 0 writes
        if self.preflight is not False and trainer.is_global_zero:
            self.preflight_report = self.guard.run("preflight", self._preflight, trainer, pl_module)
        writer = None
        if self.config.tensorboard:
            writer = self.guard.run("tensorboard logger", tensorboard_writer, trainer)
        meta = {
            "framework": framework_of(trainer),
            "accumulate_grad_batches": getattr(trainer, "accumulate_grad_batches", None),
            "precision": str(getattr(trainer, "precision", "")),
            "hparams": clean_hparams(getattr(pl_module, "hparams", None)),
        }
        self.remedy = None
        if self.options.remedy is not None:  # its step hooks go first: the recorder sees the lr the step used
            self.remedy = RemedyRunner.start(
                self.options.remedy, pl_module, trainer.optimizers, self.guard, self._remedy_state
            )
        self.session = Session(
            pl_module,
            trainer.optimizers,
            trainer.log_dir,
            tb_writer=writer,
            meta=meta,
            start_step=self._first_step(trainer.log_dir),
            resume=self._resume,
            guard=self.guard,
            options=self.options,
            on_close=[write_after_run],
        )
        self.stop_reason = None
        self._resume = None
        self._remedy_state = None
        self.diagnoses = self.session.diagnoses
        if self.remedy is not None:
            self.remedy.bind(self.session)

    def _preflight(self, trainer: Any, pl_module: Any) -> Any:
        """Before the first recorded step (its forward pass must not become step 0 of the run)."""
        from nndiag.preflight import preflight_at_fit_start

        options = dict(self.preflight) if isinstance(self.preflight, Mapping) else {}
        if self.options.num_classes is not None:
            options.setdefault("num_classes", self.options.num_classes)
        return preflight_at_fit_start(trainer, pl_module, **options)

    def _first_step(self, log_dir: str | None) -> int:
        """Resume: the checkpoint's step; another fit into the same run dir: continue; else 0."""
        if self._resume is not None:
            return self._resume.step
        if self._previous is not None and self._previous[0] == str(log_dir):
            return self._previous[1]
        return 0

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.session is not None:
            self.guard.run("batch start", self.session.begin_batch)
            self.guard.run("task targets", self._note_target, batch)

    def _note_target(self, batch: Any) -> None:
        assert self.session is not None
        target = batch_target(batch)
        if target is not None:
            self.session.note_task(target=target)

    @override
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        # the loss with its autograd graph (the one on_train_batch_end sees is detached): its kind
        if self.session is not None:
            self.guard.run("task loss", self.session.note_task, loss)

    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.remedy is not None and self.remedy.check_grads(optimizer):
            return  # a NaN/Inf batch: its gradients were dropped, the step changes nothing
        if self.session is not None:
            self.guard.run("gradient statistics", self.session.capture_grads, optimizer)

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.session is not None:
            self.guard.run("batch end", self._end_batch, trainer, pl_module, outputs)

    def _end_batch(self, trainer: Any, pl_module: Any, outputs: Any) -> None:
        assert self.session is not None
        loss = self.guard.run("loss", user_loss, trainer, pl_module, outputs)  # a failure here must not lose the step
        remedy = self.remedy
        self.session.end_batch(loss if remedy is None else remedy.batch_loss(loss))
        if remedy is not None:
            remedy.after_batch()  # every rank, at the same steps (a broadcast under DDP)
            if remedy.stop_reason is not None and self.stop_reason is None:
                self.stop_reason = remedy.stop_reason
                trainer.should_stop = True
        if self.halt_on and self.stop_reason is None:
            self.guard.run("halt_on", self._maybe_halt, trainer)

    def _maybe_halt(self, trainer: Any) -> None:
        assert self.session is not None
        hit = self.session.halting(self.halt_on)
        if hit is not None:
            self.stop_reason = f"nndiag stopped training: {hit.code} at step {hit.step}: {hit.message}"
            get_logger().error(self.stop_reason)
            trainer.should_stop = True

    @override
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.session is not None and not getattr(trainer, "sanity_checking", False):
            self.guard.run("validation loss", self._record_val_loss, trainer)

    def _record_val_loss(self, trainer: Any) -> None:
        metrics = getattr(trainer, "callback_metrics", {}) or {}
        keys = [self.val_loss_key] if self.val_loss_key else list(VAL_LOSS_KEYS)
        for key in keys:
            if key in metrics:
                assert self.session is not None
                self.session.record(Q.VAL_LOSS, float(metrics[key]))
                return

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close("finished")

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close("interrupted" if isinstance(exception, KeyboardInterrupt) else "failed")
        self._release_model()

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close("finished")
        self._release_model()

    def _release_model(self) -> None:
        # Lightning sets ``callback.log = pl_module.log`` (and ``log_dict``) on every callback at the start
        # of each run; those bound methods would keep the model alive as long as ``cb`` (read for
        # ``cb.history`` after training) is. Lightning attaches them again at the next run.
        for name in ("log", "log_dict"):
            self.__dict__.pop(name, None)

    def _close(self, status: str) -> None:
        if self.remedy is not None:
            self.guard.run("callback close", self.remedy.close)
        if self.session is not None and not self.session.closed:
            self._previous = (str(self.session.log_dir), self.session.step)
            self.guard.run("callback close", self.session.close, status)

    # -- checkpointing ---------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        """The step reached, the run directory and the open diagnoses (saved in Lightning checkpoints)."""
        resume = self.session.resume_state() if self.session is not None else (self._resume or ResumeState())
        return with_state(resume.to_state_dict(), self.remedy, self._remedy_state)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore on ``fit(ckpt_path=...)``: numbering, open diagnoses, and the run store continues the run."""
        try:
            self._resume = ResumeState.from_state_dict(state_dict)
            self._remedy_state = saved_state(state_dict)
        except ValueError as exc:
            warnings.warn(
                f"nndiag: ignoring an unreadable callback state in the checkpoint: {exc}.",
                NndiagInternalWarning,
                stacklevel=2,
            )
