"""``NndiagCallback``: nndiag for the Hugging Face ``transformers.Trainer`` (``pip install nndiag[transformers]``).

The callback is a thin adapter over the same :class:`~nndiag.session.Session` that the Lightning
callback and :class:`~nndiag.Monitor` use. Named like the Trainer's own ``TensorBoardCallback``,
``WandbCallback`` and ``MLflowCallback``.

What it does, per Trainer event:
    * ``on_train_begin``: attaches to the model and the optimizer the Trainer built (the torch
      optimizer inside Accelerate's ``AcceleratedOptimizer``), opens the run store and TensorBoard
      files in the run directory, keeps ``args.to_sanitized_dict()`` as the run's hyperparameters,
      and continues the run of the checkpoint on ``train(resume_from_checkpoint=...)``;
    * per micro-batch (``on_step_begin`` / ``on_substep_end`` / ``on_step_end``): statistics of the
      first micro-batch's forward pass on logging steps, and the loss of every micro-batch as the
      Trainer's ``training_step`` returned it (the real value: a NaN is recorded as NaN even though
      the Trainer's ``logging_nan_inf_filter`` hides it from its own logs); the loss of an optimizer
      step is the one the Trainer reports for it (the sum of the micro-batches' scaled losses);
    * optimizer steps are counted by the torch optimizer's step hooks, so
      ``gradient_accumulation_steps`` and steps a GradScaler skipped are counted right
      (the recorded steps equal ``state.global_step`` when none was skipped);
    * gradients are read in ``on_pre_optimizer_step``, i.e. after the Trainer's clipping
      (``max_grad_norm``, 1.0 by default; ``max_grad_norm=0`` records unclipped gradients);
    * ``on_evaluate``: ``eval_loss`` becomes the run-wide ``val_loss`` (overfitting rules);
    * ``halt_on``: sets ``control.should_training_stop`` (the reason is in ``stop_reason``);
    * ``on_train_end``: final advisor check, summary, and the report in the run directory.

Checkpoints keep the callback's state through the Trainer's ``ExportableState`` protocol (in
``trainer_state.json``), so ``resume_from_checkpoint`` continues the same run store and step numbering.
Under ``torchrun`` / ``accelerate launch`` every process records (statistics are combined) and only
the main process writes.

Run directory: ``log_dir`` when given, else ``args.logging_dir`` (transformers 4), else
``$TENSORBOARD_LOGGING_DIR``, else ``<output_dir>/runs/<time>_<host>`` (the Trainer's TensorBoard
default). A directory that already holds an nndiag run gets the next ``version_N`` subfolder.

Logged metrics: the same TensorBoard tags as :class:`~nndiag.DiagnosticsCallback`
(``nndiag/<stat>/<layer>``, ``nndiag/loss``, ``nndiag/grad_norm_total``, ``nndiag/diagnoses``, the
custom-scalar dashboard).

Example:
    >>> from nndiag.integrations.transformers import NndiagCallback
    >>> cb = NndiagCallback(schedule=1, halt_on="nonfinite_loss")
    >>> cb.history.empty, cb.diagnoses, cb.log_dir
    (True, [], None)

"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from nndiag.collect.optimizers import hookable_or_fallback, unwrap_module
from nndiag.config import RecorderConfig
from nndiag.diagnosis import Diagnosis
from nndiag.guard import ErrorGuard
from nndiag.integrations import hf_run
from nndiag.integrations.hf_loss import StepLoss
from nndiag.log import get_logger
from nndiag.options import AdvisorConfigLike, DiagnosticsOptions
from nndiag.remedy import Remedy, RemedyLike, RemedyRunner, saved_state, with_state
from nndiag.report.auto import write_after_run
from nndiag.resume import ResumeState
from nndiag.schedule import Schedule
from nndiag.session import Session
from nndiag.sinks.memory import MemoryHistory

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "nndiag.integrations.transformers needs Hugging Face transformers: pip install 'nndiag[transformers]'. "
        "For Lightning use nndiag.DiagnosticsCallback, for plain loops nndiag.Monitor."
    ) from exc

_WRONG_TRAINER = (
    "nndiag.integrations.transformers.NndiagCallback is a Hugging Face Trainer callback; "
    "for a Lightning Trainer use nndiag.DiagnosticsCallback."
)


class NndiagCallback(TrainerCallback, ExportableState):
    """Records per-layer training statistics in a Hugging Face ``Trainer``.

    Args:
        schedule: logging steps, as for :class:`~nndiag.DiagnosticsCallback` (``None``: every step for
            the first 20, every 10th until 200, then every 50th; an int N; or ``step -> bool``).
        config: a :class:`~nndiag.RecorderConfig`; keyword options override its fields
            (``histograms=True``, ``update_ratio="sampled"``, ``report=False``, ...).
        log_dir: the run directory (default: the Trainer's logging directory, see the module docstring).
        diagnose, advisor_config, num_classes, halt_on: as for :class:`~nndiag.DiagnosticsCallback`.
        preflight: run :func:`nndiag.preflight` on the first training batch when training starts (main
            process; the model is called as ``model(input_ids)`` / ``model(pixel_values)``). ``True``
            or a dict of options (``loss_fn``, ``overfit``, ...). Default off.
        val_loss_key: the evaluation metric recorded as ``val_loss`` (default ``eval_loss``).
        remedy: ``True`` or a :class:`~nndiag.RemedyConfig`: roll back and cool down on divergence, skip
            NaN/Inf batches (docs/remedy.md); what it did is in ``remedies``. Off by default.

    Attributes:
        history: pandas DataFrame (step, layer, stat, value).
        diagnoses: list of :class:`~nndiag.Diagnosis`.
        stop_reason: why ``halt_on`` stopped training, else ``None``.
        preflight_report: the :class:`~nndiag.preflight.PreflightReport` when ``preflight`` is on.

    Example:
        >>> NndiagCallback(halt_on="nan_loss")
        Traceback (most recent call last):
        ...
        ValueError: halt_on: unknown diagnosis code(s) nan_loss; valid codes: ...lr_too_high, ...
    """

    def __init__(
        self,
        schedule: Schedule = None,
        *,
        config: RecorderConfig | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        diagnose: bool = True,
        advisor_config: AdvisorConfigLike = None,
        num_classes: int | None = None,
        halt_on: Iterable[str] | str = (),
        preflight: bool | Mapping[str, Any] = False,
        val_loss_key: str = "eval_loss",
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
        self.remedy: RemedyRunner | None = None
        self._remedy_state: dict[str, Any] | None = None
        if not isinstance(preflight, (bool, Mapping)):
            raise TypeError(f"preflight must be True/False or a dict of nndiag.preflight options, got {preflight!r}.")
        self.schedule = schedule
        self.config = self.options.config
        self.halt_on = self.options.halt_on
        self.preflight = preflight
        self.val_loss_key = val_loss_key
        self._log_dir = None if log_dir is None else str(log_dir)
        self._init_args = {
            "schedule": schedule,
            "log_dir": self._log_dir,
            "diagnose": diagnose,
            "advisor_config": advisor_config,
            "num_classes": num_classes,
            "halt_on": list(self.halt_on),
            "preflight": preflight,
            "val_loss_key": val_loss_key,
            "remedy": None if self.options.remedy is None else self.options.remedy.to_dict(),
            **options,
        }
        self.guard = ErrorGuard()
        self.session: Session | None = None
        self.stop_reason: str | None = None
        self.preflight_report: Any = None
        self.diagnoses: list[Diagnosis] = []
        self._resume: ResumeState | None = None
        self._empty = MemoryHistory()
        self._loss = StepLoss(self.guard)  # the loss of each step, from the Trainer's training_step

    # -- results ---------------------------------------------------------------------
    @property
    def history(self) -> pd.DataFrame:
        """Recorded statistics: long-format DataFrame with columns step, layer, stat, value."""
        return self._empty.frame() if self.session is None else self.session.history

    @property
    def log_dir(self) -> str | None:
        """The run directory (run store, nndiag's TensorBoard files, the report), once training started."""
        if self.session is None or self.session.log_dir is None:
            return None
        return str(self.session.log_dir)

    # -- Trainer events --------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = hf_run.find_trainer()
        self.guard.run("callback start", self._start, args, state, trainer, kwargs)

    def _start(self, args: Any, state: Any, trainer: Any, kwargs: dict[str, Any]) -> None:
        self._finish("failed")  # a run still open here never reached on_train_end: its training raised
        model = kwargs.get("model")
        optimizer = kwargs.get("optimizer")
        if model is None or optimizer is None:
            get_logger().warning("nndiag: the Trainer passed no model or optimizer to on_train_begin; not recording.")
            return
        model = unwrap_module(model)
        resume = self._resume or hf_run.saved_state(state)
        main = bool(getattr(state, "is_world_process_zero", True))
        if self.preflight is not False and main:
            self.preflight_report = self.guard.run("preflight", self._preflight, model, kwargs)
        log_dir = hf_run.run_dir(self._log_dir, args, resume) if main else None
        optimizers = [hookable_or_fallback(optimizer)]
        self.remedy = None
        if self.options.remedy is not None:  # its step hooks go first: the recorder sees the lr the step used
            self.remedy = RemedyRunner.start(self.options.remedy, model, optimizers, self.guard, self._remedy_state)
        self.session = Session(
            model,
            optimizers,
            log_dir,
            meta=hf_run.run_meta(args, model),
            resume=resume,
            guard=self.guard,
            options=self.options,
            on_close=[write_after_run],
        )
        self._resume = None
        self._remedy_state = None
        self.stop_reason = None
        self.diagnoses = self.session.diagnoses
        if self.remedy is not None:
            self.remedy.bind(self.session)
        self._loss.watch(trainer, model)

    def _preflight(self, model: Any, kwargs: dict[str, Any]) -> Any:
        from nndiag.preflight.batch import model_device
        from nndiag.preflight.lightning import preflight_at_fit_start, preserved_rng

        loader = kwargs.get("train_dataloader")
        if loader is None:
            get_logger().info("nndiag preflight skipped: the Trainer passed no training dataloader.")
            return None
        with preserved_rng(model_device(model)):
            batch = next(iter(loader), None)
        if batch is None:
            return None
        batch = {k: v for k, v in batch.items() if k != "labels"} if isinstance(batch, Mapping) else batch
        options = dict(self.preflight) if isinstance(self.preflight, Mapping) else {}
        if self.options.num_classes is not None:
            options.setdefault("num_classes", self.options.num_classes)
        return preflight_at_fit_start(None, model, batch=batch, **options)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.session is not None:
            self._loss.reset()
            self.guard.run("batch start", self.session.begin_batch)

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.session is not None:  # a micro-batch without an optimizer step (gradient accumulation)
            self.guard.run("batch end", self.session.end_batch, None)
            self.guard.run("batch start", self.session.begin_batch)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.session is not None:  # gradients as the optimizer will apply them (after clipping)
            self.guard.run("gradient statistics", self.session.capture_grads, None)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.session is None:
            return
        loss = self._loss.take()
        remedy = self.remedy
        self.guard.run("batch end", self.session.end_batch, loss if remedy is None else remedy.batch_loss(loss))
        if remedy is not None:
            remedy.after_batch()  # every process, at the same steps (a broadcast when distributed)
            if remedy.stop_reason is not None and self.stop_reason is None:
                self.stop_reason = remedy.stop_reason
                control.should_training_stop = True
        if self.halt_on and self.stop_reason is None:
            hit = self.guard.run("halt_on", self.session.halting, self.halt_on)
            if hit is not None:
                self.stop_reason = f"nndiag stopped training: {hit.code} at step {hit.step}: {hit.message}"
                get_logger().error(self.stop_reason)
                control.should_training_stop = True

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        if self.session is not None and not self.session.closed and isinstance(metrics, Mapping):
            value = metrics.get(self.val_loss_key)
            if isinstance(value, (int, float)):
                self.guard.run("validation loss", self.session.record, "val_loss", float(value))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._finish("finished")

    @property
    def remedies(self) -> list[Remedy]:
        """What the remedy did (rollbacks, skipped batches, a halt), in order; empty without ``remedy``."""
        return [] if self.remedy is None else list(self.remedy.remedies)

    def _finish(self, status: str) -> None:
        self.guard.run("callback close", self._loss.unwatch)
        if self.remedy is not None:
            self.guard.run("callback close", self.remedy.close)
        if self.session is not None and not self.session.closed:
            self.guard.run("callback close", self.session.close, status)

    # -- checkpoints (the Trainer's ExportableState protocol) -------------------------
    def state(self) -> dict[str, Any]:
        """What ``trainer_state.json`` keeps: the JSON-safe options and the resume state."""
        resume = self.session.resume_state() if self.session is not None else (self._resume or ResumeState())
        saved = hf_run.jsonable(with_state(resume.to_state_dict(), self.remedy, self._remedy_state))
        return {"args": hf_run.json_safe_args(self._init_args), "attributes": {hf_run.STATE_KEY: saved}}

    @property
    def nndiag_resume(self) -> dict[str, Any] | None:
        """The state to resume from (set by the Trainer when it restores callbacks from a checkpoint)."""
        return None if self._resume is None else self._resume.to_state_dict()

    @nndiag_resume.setter
    def nndiag_resume(self, value: Any) -> None:
        self._resume = hf_run.parse_state(value)
        self._remedy_state = saved_state(value)

    # -- the wrong trainer: a Lightning Trainer reads ``state_key`` and calls ``setup`` first --
    @property
    def state_key(self) -> str:
        """Lightning's callback identity: raises, naming the callback Lightning needs."""
        raise TypeError(_WRONG_TRAINER)

    def setup(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(_WRONG_TRAINER)

    def on_exception(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's failure hook: nothing to do (lets the ``TypeError`` above reach the user)."""
