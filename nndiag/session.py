"""One recording session: recorder + background pipeline + sinks, framework-independent.

Both adapters (the Lightning callback and :class:`~nndiag.Monitor`) are thin layers over
this class. It never raises into the training loop: an unwritable log directory gives a
warning and in-memory operation; internal errors go through the :class:`~nndiag.guard.ErrorGuard`.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.session import Session
    >>> model = nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> s = Session(model, [opt], log_dir=None)
    >>> s.begin_batch()
    >>> loss = model(torch.randn(4, 2)).pow(2).mean(); loss.backward(); opt.step()
    >>> s.end_batch(loss); s.close()
    >>> {"act_std", "grad_norm", "update_ratio", "loss"} <= set(s.history.stat)
    True

"""

from __future__ import annotations

import atexit
import logging
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from nndiag.advice import AdvisorLoop
from nndiag.advisor import by_severity
from nndiag.collect.distributed import combiner_for
from nndiag.collect.packet import Packet
from nndiag.collect.recorder import Recorder
from nndiag.config import RecorderConfig
from nndiag.diagnosis import Diagnosis
from nndiag.facts import ModelFacts
from nndiag.guard import ErrorGuard, NndiagInternalWarning
from nndiag.log import get_logger
from nndiag.options import DiagnosticsOptions
from nndiag.pipeline import ACTING_BATCH_SECONDS, BATCH_SECONDS, Pipeline
from nndiag.resume import ResumeState
from nndiag.rows import Rows
from nndiag.schedule import Schedule
from nndiag.sinks.memory import MemoryHistory
from nndiag.sinks.tensorboard import TensorBoardSink
from nndiag.store.reader import load_run
from nndiag.store.writer import RunStore


class Session:
    """Records one training run of one model."""

    def __init__(
        self,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        log_dir: str | Path | None,
        config: RecorderConfig | None = None,
        schedule: Schedule = None,
        tb_writer: Any = None,
        meta: dict[str, Any] | None = None,
        start_step: int = 0,
        guard: ErrorGuard | None = None,
        advice: AdvisorLoop | None = None,
        resume: ResumeState | None = None,
        options: DiagnosticsOptions | None = None,
        on_close: Sequence[Callable[[Session], None]] = (),
    ) -> None:
        if options is not None:  # the adapters' options; explicit arguments take precedence
            config = config or options.config
            schedule = schedule if schedule is not None else options.schedule
            advice = advice if advice is not None else options.advice()
        self.halt_on: tuple[str, ...] = options.halt_on if options is not None else ()
        self.on_close = list(on_close)  # called with the session once it closed (e.g. the post-run report)
        self.config = config or RecorderConfig()
        self.guard = guard or ErrorGuard()
        # torch.distributed: every rank records and takes part in the exchange; only rank 0 writes
        self.combiner = combiner_for(model, self.config.distributed)
        if not self.combiner.writer:
            log_dir, tb_writer, advice = None, None, None
        continued = None
        if resume is not None:
            start_step = resume.step
            continued = resume.continued_dir() if self.combiner.writer and log_dir is not None else None
            if continued is not None:
                log_dir = continued  # the store continues the same run
            elif resume.run_dir:
                meta = {**(meta or {}), "resumed_from": {"run_dir": resume.run_dir, "step": resume.step}}
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.advice = advice
        self.diagnoses: list[Diagnosis] = advice.diagnoses if advice is not None else []
        if self.log_dir is not None and (self.config.store or (self.config.tensorboard and tb_writer is None)):
            self.log_dir = self._writable(self.log_dir)
        meta = {**(meta or {}), "world_size": self.combiner.world_size}
        if self.combiner.world_size > 1:
            meta["combined"] = self.combiner.distributed
        store = self._open_store(meta) if self.config.store and self.log_dir is not None else None
        tb = self._open_tensorboard(tb_writer) if self.config.tensorboard else None
        self.pipeline = Pipeline(
            memory=MemoryHistory(self.config.memory_rows),
            store=store,
            tensorboard=tb,
            guard=self.guard,
            flush_seconds=self.config.flush_seconds,
            max_queue=self.config.max_queue,
            advice=advice,
            batch_seconds=ACTING_BATCH_SECONDS if self.halt_on or (options and options.remedy) else BATCH_SECONDS,
        )
        if resume is not None:
            self.guard.run("resume", self._resume, resume, continued is not None and store is not None)
        submit = self.pipeline.submit if self.combiner.writer else _discard
        self.recorder = Recorder(
            model,
            optimizers,
            submit,
            self.config,
            schedule,
            self.guard,
            start_step,
            combiner=self.combiner,
            init_facts=self.pipeline.facts.init if self.pipeline.facts is not None else None,
        )
        self.recorder.attach()
        self.closed = False
        self._atexit = _close_at_exit(weakref.ref(self))
        atexit.register(self._atexit)

    def _resume(self, resume: ResumeState, continued: bool) -> None:
        """Restore open diagnoses; when the store continues, drop redone steps and reload the earlier history."""
        if self.advice is not None:
            self.advice.restore(resume.diagnoses)
        if not continued:
            return
        store = self.pipeline.store
        assert store is not None
        assert self.log_dir is not None
        store.truncate_from(resume.step)  # steps after the checkpoint are trained again
        earlier = load_run(self.log_dir)
        self.pipeline.facts = ModelFacts.from_dict(earlier.facts) if earlier.facts else None
        h = earlier.history
        if len(h):
            self.pipeline.memory.write_rows(
                Rows(h.step.to_numpy(), h.layer.tolist(), h.stat.tolist(), h.value.to_numpy(dtype=float))
            )
        get_logger().info("nndiag: resuming run %s at step %d", self.log_dir, resume.step)

    @staticmethod
    def _writable(log_dir: Path) -> Path | None:
        """``log_dir`` if nndiag can create files in it; else one warning and ``None`` (memory only)."""
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            probe = log_dir / ".nndiag_write_test"
            probe.write_bytes(b"")
            probe.unlink()
            return log_dir
        except OSError as exc:
            warnings.warn(
                f"nndiag: cannot write to the log directory {log_dir} ({exc}); recording in memory only: "
                ".history still works, but no run store or nndiag TensorBoard file is written. "
                "Pass a writable log directory to keep the run.",
                NndiagInternalWarning,
                stacklevel=4,
            )
            return None

    def _open_store(self, meta: dict[str, Any] | None) -> RunStore | None:
        assert self.log_dir is not None
        try:
            return RunStore(self.log_dir, {"config": _config_meta(self.config), **(meta or {})})
        except Exception as exc:
            warnings.warn(
                f"nndiag: cannot write the run store in {self.log_dir} ({exc}); recording in memory only "
                "(.history still works). Pass a writable log directory to keep the run.",
                NndiagInternalWarning,
                stacklevel=3,
            )
            return None

    def _open_tensorboard(self, writer: Any) -> TensorBoardSink | None:
        if writer is not None:
            return TensorBoardSink(writer)
        if self.log_dir is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter

            return TensorBoardSink(SummaryWriter(str(self.log_dir)), owns_writer=True)
        except Exception as exc:
            warnings.warn(
                f"nndiag: cannot write TensorBoard logs in {self.log_dir} ({exc}); continuing without them.",
                NndiagInternalWarning,
                stacklevel=3,
            )
            return None

    # -- per-batch protocol (delegated) ----------------------------------------------
    def begin_batch(self) -> None:
        """See :meth:`Recorder.begin_batch`."""
        self.recorder.begin_batch()

    def capture_grads(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """See :meth:`Recorder.capture_grads`."""
        self.recorder.capture_grads(optimizer)

    def drop_step_loss(self) -> None:
        """Forget the losses kept for the optimizer step in progress (the remedy skipped it: no update came of it).

        Gradient accumulation: the micro-batches before the step already gave their losses (one was NaN/Inf).
        """
        self.recorder.drop_step_loss()

    def end_batch(self, loss: Any = None, target: Any = None) -> None:
        """See :meth:`Recorder.end_batch`."""
        if self.halt_on and self.combiner.distributed:  # rank 0's vote travels with the next exchange
            self.combiner.vote_halt(bool(self.guard.run("halt_on", self.halting_locally, self.halt_on)))
        self.recorder.end_batch(loss, target)

    def note_task(self, loss: Any = None, target: Any = None) -> None:
        """See :meth:`Recorder.note_task` (the loss before ``backward()``, the batch's targets)."""
        self.recorder.note_task(loss, target)

    def halting(self, codes: tuple[str, ...]) -> Diagnosis | None:
        """The first open diagnosis whose code is in ``codes`` (``halt_on``), else ``None``.

        Distributed: rank 0's advisors decide; rank 0 votes at every exchange (:meth:`end_batch` calls
        :meth:`~nndiag.collect.distributed.RankCombiner.vote_halt` before it), every rank learns the
        decision at the same exchange (the next logging step) and only then returns it, so that all
        ranks stop at the same step (a rank that stopped alone would leave the others waiting in the
        gradient all-reduce).
        """
        if not codes:
            return None
        if not self.halt_on:
            self.halt_on = tuple(codes)  # adapters that name the codes only here: vote with them from now on
            self.pipeline.batch_seconds = min(self.pipeline.batch_seconds, ACTING_BATCH_SECONDS)  # stop sooner
        hit = next((d for d in self.diagnoses if d.code in codes and not d.resolved), None)
        if not self.combiner.distributed:
            return hit
        if not self.combiner.agreed_halt:
            return None
        return hit or Diagnosis(
            code="halted_by_rank_0",
            severity="error",
            step=self.step,
            layer=None,
            message=f"rank 0 stopped training on a halt_on diagnosis (see its log); this is rank {self.combiner.rank}",
        )

    def halting_locally(self, codes: tuple[str, ...]) -> bool:
        """Whether an open diagnosis in ``codes`` holds on this rank (rank 0's vote to halt)."""
        return any(d.code in codes and not d.resolved for d in self.diagnoses)

    def publish(self, diagnosis: Diagnosis) -> None:
        """Add a diagnosis nndiag itself made (a record code such as ``remedied``) to the run's diagnoses.

        It is handled on the writer thread, in order with the packets: it joins :attr:`diagnoses` (the
        summary, the resume state) and goes to the run store and TensorBoard as the advisors' do.
        Where no advisors run (``diagnose=False``, ranks other than 0) nothing happens.
        """
        if self.advice is not None and not self.closed:
            self.pipeline.submit(("callback", lambda: self.guard.run("publish diagnosis", self._publish, diagnosis)))

    def _publish(self, diagnosis: Diagnosis) -> None:
        assert self.advice is not None
        self.advice.advisor.record(diagnosis)
        step = diagnosis.last_step or diagnosis.step
        self.pipeline.publish_diagnoses(step, [diagnosis], by_severity(self.advice.diagnoses))

    def forget(self, first: int, last: int) -> None:
        """Hide steps ``first..last`` from the advisors (rolled back or skipped); the store keeps them."""
        if self.advice is not None:
            self.advice.forget(first, last)

    def record(self, stat: str, value: float, layer: str = "") -> None:
        """Record a host-side value (e.g. ``val_loss``) at the current optimizer step."""
        if not self.closed:
            step = max(self.recorder.step - 1, 0)  # the last completed step
            self.pipeline.submit(Packet.build(step, extras=[(layer, stat, float(value))]))

    def resume_state(self) -> ResumeState:
        """What a checkpoint keeps: the step reached, this run's directory, the open diagnoses."""
        return ResumeState(
            step=self.recorder.step,
            run_dir=str(self.log_dir) if self.log_dir is not None and self.pipeline.store is not None else None,
            diagnoses=[d for d in self.diagnoses if not d.resolved],
        )

    @property
    def step(self) -> int:
        """Optimizer steps completed so far."""
        return self.recorder.step

    # -- results ---------------------------------------------------------------------
    @property
    def history(self) -> pd.DataFrame:
        """Everything recorded so far (long format), after waiting for the writer to catch up."""
        if not self.closed:
            self.pipeline.drain()
        mem = self.pipeline.memory
        if mem.complete or self.pipeline.store is None:
            return mem.frame()
        return load_run(self.pipeline.store.path).history

    @property
    def facts(self) -> dict[str, Any]:
        """Model facts gathered at the first logging step, as stored (empty before it); see :attr:`model_facts`."""
        facts = self.model_facts
        return facts.to_dict() if facts is not None else {}

    @property
    def model_facts(self) -> ModelFacts | None:
        """Typed model facts gathered at the first logging step (``None`` before it)."""
        if not self.closed:
            self.pipeline.drain()
        return self.pipeline.facts

    def close(self, status: str = "finished") -> None:
        """Flush everything, remove hooks and close the sinks (idempotent).

        ``status`` is stored in the run's metadata: ``finished``, ``failed`` (the training
        raised), ``interrupted`` (KeyboardInterrupt) or ``exited`` (the process ended without
        ``close()``; nndiag flushed at exit). A killed process leaves ``running``.
        """
        if self.closed:
            return
        atexit.unregister(self._atexit)
        self.guard.run("recorder close", self.recorder.close)
        self.pipeline.close(status)  # runs the final advisor check before closing the store
        self.closed = True
        logger = get_logger()
        if self.advice is not None:
            problems = any(d.severity != "info" for d in self.advice.diagnoses)
            logger.log(logging.WARNING if problems else logging.INFO, self.advice.summary(self.recorder.step))
        if self.log_dir is not None and self.pipeline.store is not None:
            logger.info("nndiag: run store %s (nndiag show %s)", self.pipeline.store.path, self.log_dir)
        for after in self.on_close:
            after(self)


def _discard(item: Any) -> None:
    """The ``submit`` of ranks other than 0: they take part in the exchange but write nothing."""


def _close_at_exit(ref: weakref.ref[Session]) -> Any:
    """An atexit callback that flushes a session the user never closed (status ``exited``)."""

    def close() -> None:
        session = ref()
        if session is not None and not session.closed:
            session.close("exited")

    return close


def _config_meta(config: RecorderConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config)
