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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from nndiag.advice import AdvisorLoop
from nndiag.collect.packet import Packet
from nndiag.collect.recorder import Recorder
from nndiag.config import RecorderConfig
from nndiag.diagnosis import Diagnosis
from nndiag.guard import ErrorGuard, NndiagInternalWarning
from nndiag.log import get_logger
from nndiag.pipeline import Pipeline
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
    ) -> None:
        self.config = config or RecorderConfig()
        self.guard = guard or ErrorGuard()
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.advice = advice
        self.diagnoses: list[Diagnosis] = advice.diagnoses if advice is not None else []
        if self.log_dir is not None and (self.config.store or (self.config.tensorboard and tb_writer is None)):
            self.log_dir = self._writable(self.log_dir)
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
        )
        self.recorder = Recorder(model, optimizers, self.pipeline.submit, self.config, schedule, self.guard, start_step)
        self.recorder.attach()
        self.closed = False
        self._atexit = _close_at_exit(weakref.ref(self))
        atexit.register(self._atexit)

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

    def end_batch(self, loss: Any = None) -> None:
        """See :meth:`Recorder.end_batch`."""
        self.recorder.end_batch(loss)

    def halting(self, codes: tuple[str, ...]) -> Diagnosis | None:
        """The first open diagnosis whose code is in ``codes`` (``halt_on``), else ``None``."""
        return next((d for d in self.diagnoses if d.code in codes and not d.resolved), None)

    def record(self, stat: str, value: float, layer: str = "") -> None:
        """Record a host-side value (e.g. ``val_loss``) at the current optimizer step."""
        if not self.closed:
            step = max(self.recorder.step - 1, 0)  # the last completed step
            self.pipeline.submit(Packet.build(step, extras=[(layer, stat, float(value))]))

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
        """Model facts gathered at the first logging step (empty before it)."""
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
            if self.config.wants_report:
                self.guard.run("post-run report", self._write_report, self.log_dir)

    @staticmethod
    def _write_report(log_dir: Path) -> None:
        from nndiag.report.write import write_report

        paths = write_report(log_dir)
        get_logger().info("nndiag: report %s", paths["html"])


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
