"""``Monitor``: nndiag for plain PyTorch training loops.

Call ``mon.step(loss)`` once per batch, after ``optimizer.step()`` (or after the
backward pass of a batch that does not step, under gradient accumulation). Steps are
counted by the optimizer's own step hooks, so accumulation is counted right and a step an
AMP ``GradScaler`` skipped is not counted; the loss of the batches of one optimizer step is
averaged. (A plain loop cannot tell a skipped step from accumulation, so the loss of a
skipped batch is averaged into the next step's; the Lightning callback drops it.)

Gradients are read when ``optimizer.step()`` runs, i.e. after any clipping your loop
does (the Lightning callback reads them before Lightning's clipping).

Logs go to ``<log_dir>/version_<N>`` (the next free N, as Lightning does): TensorBoard
event files and the run store ``nndiag.sqlite``. ``log_dir=None`` records in memory only.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag import Monitor
    >>> model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    >>> with Monitor(model, opt, log_dir=None, schedule=1) as mon:
    ...     for _ in range(5):
    ...         x, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
    ...         loss = nn.functional.cross_entropy(model(x), y)
    ...         loss.backward(); opt.step(); opt.zero_grad()
    ...         mon.step(loss)
    >>> h = mon.history
    >>> int(h[h.stat == "loss"].step.max()), sorted(h[h.layer == "1"].stat.unique())
    (4, ['act_mean', 'act_std', 'dead_frac', 'nonfinite'])

"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from nndiag.collect.distributed import writes_here
from nndiag.collect.optimizers import hookable_or_fallback, unwrap_module, unwrap_optimizer
from nndiag.config import RecorderConfig
from nndiag.diagnosis import Diagnosis
from nndiag.options import AdvisorConfigLike, DiagnosticsOptions, clean_hparams
from nndiag.remedy import Remedy, RemedyLike, RemedyRunner, saved_state, with_state
from nndiag.report.auto import write_after_run
from nndiag.resume import ResumeState
from nndiag.schedule import Schedule
from nndiag.session import Session


def next_version_dir(root: str | Path) -> Path:
    """``root/version_N`` for the smallest N not used yet."""
    root = Path(root)
    n = 0
    while (root / f"version_{n}").exists():
        n += 1
    return root / f"version_{n}"


class Monitor:
    """Records per-layer statistics of a model trained by a plain PyTorch loop.

    Args:
        model: the model being trained.
        optimizer: its optimizer, or a sequence of optimizers.
        log_dir: parent folder of the run's ``version_N`` folder, or ``None`` (memory only).
        schedule: logging steps, as for :class:`~nndiag.DiagnosticsCallback`.
        config: a :class:`~nndiag.RecorderConfig`; keyword options override its fields.
        diagnose, advisor_config, num_classes, halt_on: as for :class:`~nndiag.DiagnosticsCallback`;
            with ``halt_on``, check ``mon.should_stop`` in the loop.
        resume: a :meth:`state_dict` saved with a checkpoint: numbering, open diagnoses and (when its
            directory still exists) the run store continue from it.
        remedy: ``True`` or a :class:`~nndiag.RemedyConfig`: roll back to a good state and cut the learning
            rate when the run diverges, skip NaN/Inf batches (docs/remedy.md); check ``mon.should_stop``.
        hparams: the run's hyperparameters (``{"lr": 3e-4, "batch_size": 64}``), kept in the run
            store (``load_run(...).meta["hparams"]``) for ``nndiag sweep`` and the report.

    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        log_dir: str | Path | None = "runs/nndiag",
        *,
        schedule: Schedule = None,
        config: RecorderConfig | None = None,
        diagnose: bool = True,
        advisor_config: AdvisorConfigLike = None,
        num_classes: int | None = None,
        halt_on: Iterable[str] | str = (),
        remedy: RemedyLike = None,
        hparams: Mapping[str, Any] | None = None,
        resume: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Monitor expects an nn.Module as model, got {type(model).__name__}.")
        model = unwrap_module(model)  # Fabric / DDP wrappers: record the user's module under its own names
        optimizers: list[torch.optim.Optimizer] = (
            list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]  # type: ignore[list-item]
        )
        for opt in optimizers:
            if not hasattr(opt, "param_groups") and unwrap_optimizer(opt) is None:
                raise TypeError(
                    f"Monitor expects a torch optimizer (or a list of them), got {type(opt).__name__}; "
                    "pass the optimizer that trains the model."
                )
        # Accelerate / Fabric wrappers: hook the torch optimizer inside (else: one warning, each step() counts)
        optimizers = [hookable_or_fallback(opt) for opt in optimizers]
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
        self.halt_on = self.options.halt_on
        state = None
        if resume is not None:
            try:
                state = ResumeState.from_state_dict(dict(resume) if isinstance(resume, Mapping) else resume)
            except ValueError as exc:
                raise ValueError(f"resume must be a Monitor.state_dict() saved with your checkpoint: {exc}.") from None
        # torch.distributed: every rank records (statistics are combined), rank 0 alone writes the run
        run_dir = None
        if log_dir is not None and writes_here():
            continued = state.continued_dir() if state is not None else None
            run_dir = continued if continued is not None else next_version_dir(log_dir)
        self.remedy: RemedyRunner | None = None
        if self.options.remedy is not None:  # its step hooks go first: the recorder sees the lr the step used
            self.remedy = RemedyRunner.start(self.options.remedy, model, optimizers, state=saved_state(resume))
        self.session = Session(
            model,
            optimizers,
            run_dir,
            meta={"framework": "torch", "hparams": clean_hparams(hparams)},
            resume=state,
            options=self.options,
            on_close=[write_after_run],
        )
        if self.remedy is not None:
            self.remedy.bind(self.session)
        self.session.begin_batch()

    def step(self, loss: torch.Tensor | float | None = None, *, target: torch.Tensor | None = None) -> None:
        """Mark the end of a batch (call after ``optimizer.step()``), with its loss and optionally its targets.

        The loss tensor is kept on the device; no host synchronisation happens here. Pass the loss
        tensor itself (not ``loss.item()``): on logging steps nndiag reads the loss kind from its
        autograd graph. ``target=y`` (optional) lets nndiag check the task: targets against the
        output activation and the loss, target scale, the loss of a constant prediction.
        """
        if self.remedy is not None:
            loss = self.remedy.batch_loss(loss)  # a skipped NaN/Inf step made no update: its loss is not the run's
        self.session.end_batch(loss, target)
        if self.remedy is not None:
            self.remedy.after_batch()
        self.session.begin_batch()

    def record(self, stat: str, value: float) -> None:
        """Record a run-wide value at the last optimizer step, e.g. ``mon.record("val_loss", v)``.

        ``val_loss`` feeds the overfitting/underfitting advisors. ``value`` may be a tensor
        (read once here: call it at validation time, not every step).
        """
        if not isinstance(stat, str) or not stat or stat.startswith("_"):
            raise ValueError(f"stat must be a non-empty name not starting with '_', got {stat!r}.")
        self.session.record(stat, float(value))

    @property
    def history(self) -> pd.DataFrame:
        """Recorded statistics: long-format DataFrame with columns step, layer, stat, value."""
        return self.session.history

    @property
    def diagnoses(self) -> list[Diagnosis]:
        """Diagnoses of this run."""
        return self.session.diagnoses

    @property
    def log_dir(self) -> str | None:
        """The run's folder (``<log_dir>/version_N``), or ``None`` in memory-only mode."""
        return None if self.session.log_dir is None else str(self.session.log_dir)

    @property
    def remedies(self) -> list[Remedy]:
        """What the remedy did (rollbacks, skipped batches, a halt), in order; empty without ``remedy``."""
        return [] if self.remedy is None else list(self.remedy.remedies)

    @property
    def should_stop(self) -> bool:
        """True once a diagnosis listed in ``halt_on`` holds, or the remedy gave up: ``if mon.should_stop: break``."""
        return self.stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        """Why ``should_stop`` is True (the remedy's reason, or the first ``halt_on`` diagnosis), else ``None``."""
        if self.remedy is not None and self.remedy.stop_reason is not None:
            return self.remedy.stop_reason
        hit = self.session.halting(self.halt_on) if self.halt_on else None
        return None if hit is None else f"nndiag: {hit.code} at step {hit.step}: {hit.message}"

    @property
    def steps(self) -> int:
        """Optimizer steps counted so far."""
        return self.session.step

    def state_dict(self) -> dict[str, Any]:
        """Save this with your checkpoint; ``Monitor(..., resume=state)`` continues the run from it.

        Holds the optimizer steps counted (the schedule's position), the run directory and the open
        diagnoses, as plain data (``torch.save`` / JSON friendly); with ``remedy``, its state too.
        """
        return with_state(self.session.resume_state().to_state_dict(), self.remedy)

    def close(self, status: str = "finished") -> None:
        """Flush everything and remove all hooks (idempotent; ``with`` does it for you)."""
        if self.remedy is not None:
            self.remedy.close()
        self.session.close(status)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("finished")
        else:
            self.close("interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed")
