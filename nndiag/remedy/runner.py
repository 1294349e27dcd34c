"""``RemedyRunner``: watches the diagnoses, keeps good states, rolls back and cools down, or halts.

The adapters call it in a few places (see docs/remedy.md):

* ``attach()`` before the :class:`~nndiag.session.Session` is created (its step hooks run first, so
  nndiag records the learning rate the step used), then ``bind(session)``;
* Lightning only: ``check_grads(optimizer)`` in ``on_before_optimizer_step`` (plain loops and Hugging
  Face are checked by the optimizer's step pre-hook);
* ``batch_loss(loss)`` for ``session.end_batch`` (the loss of a skipped step is not recorded), then
  ``after_batch()``; ``stop_reason`` once the attempts ran out.

Decisions are made after each optimizer step (under ``torch.distributed`` every ``sync_every`` steps,
by rank 0, and broadcast, so that every rank restores the same state at the same step), from the
diagnoses the advisors published: a *fresh* diagnosis whose code is in ``on`` (one the advisors saw
after the last rollback), or ``skip_limit`` NaN/Inf steps in a row, triggers a rollback to the last
confirmed good state, with every learning rate cut by ``lr_factor``; after ``max_attempts`` rollbacks
the next trigger halts the run. Steps keep counting forward; the rolled-back stretch stays in the run
store and is hidden from the advisors (:meth:`nndiag.advice.AdvisorLoop.forget`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from nndiag.advice import AdvisorLoop
from nndiag.collect.ranks import collective_device
from nndiag.diagnosis import Diagnosis
from nndiag.guard import ErrorGuard, NndiagInternalWarning
from nndiag.log import get_logger
from nndiag.remedy.config import RemedyConfig
from nndiag.remedy.hooks import StepHooks
from nndiag.remedy.keeper import GoodState, StateKeeper
from nndiag.remedy.records import Remedy, remedied_diagnosis

NONE, ROLLBACK, HALT = 0, 1, 2
HEALTHY_RESET = (
    10  # keep_every's: after this long a healthy stretch (and a good state confirmed in it), attempts restart
)
# (action, pending copy to promote, take a copy, pending copy to roll back to); -1: none / the good copy
Plan = tuple[int, int, bool, int]


class SessionLike(Protocol):
    """What the runner needs of a :class:`~nndiag.session.Session`."""

    diagnoses: list[Diagnosis]
    advice: AdvisorLoop | None
    combiner: Any  # distributed: bool, writer: bool

    @property
    def step(self) -> int: ...

    def forget(self, first: int, last: int) -> None: ...

    def drop_step_loss(self) -> None: ...

    def publish(self, diagnosis: Diagnosis) -> None: ...


class RemedyRunner:
    """The remedy of one run (one model and its optimizers)."""

    def __init__(
        self,
        config: RemedyConfig,
        model: nn.Module,
        optimizers: Sequence[Any],
        guard: ErrorGuard | None = None,
    ) -> None:
        self.config = config
        self.guard = guard or ErrorGuard()
        self.optimizers = list(optimizers)
        self.hooks = StepHooks(self.optimizers, config.skip_nonfinite)
        self.keeper = StateKeeper(model, self.optimizers, config.device)
        self.session: SessionLike | None = None
        self.remedies: list[Remedy] = []
        self.attempts = 0
        self.stop_reason: str | None = None
        self.acted_step = -1  # the step of the last rollback: diagnoses the advisors saw before it are stale
        self.forgotten: list[tuple[int, int]] = []  # step ranges hidden from the advisors (kept for resume)
        self._last_step: int | None = None
        self._last_take: int | None = None
        self._broken = False  # distributed agreement failed: no more actions

    # -- wiring ----------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        config: RemedyConfig,
        model: nn.Module,
        optimizers: Sequence[Any],
        guard: ErrorGuard | None = None,
        state: dict[str, Any] | None = None,
    ) -> RemedyRunner:
        """A runner with its step hooks attached and a checkpoint's remedy ``state`` (if any) loaded.

        Create it before the :class:`~nndiag.session.Session` (its hooks must run first), then :meth:`bind`.
        """
        runner = cls(config, model, optimizers, guard)
        runner.attach()
        if state is not None:
            runner.load_state_dict(state)
        return runner

    def attach(self) -> None:
        """Register the step hooks (call before the session's recorder registers its own)."""
        self.hooks.attach()

    def bind(self, session: SessionLike) -> None:
        """The session whose diagnoses decide; re-hides a resumed run's rolled-back stretches."""
        self.session = session
        self.hooks.on_skip = lambda: session.step
        self._last_step = session.step
        for first, last in self.forgotten:
            session.forget(first, last)

    def close(self) -> None:
        """Remove the hooks and drop the good states."""
        self.hooks.detach()
        self.keeper.pending, self.keeper.good = [], None

    # -- per step ----------------------------------------------------------------------
    @property
    def skipping(self) -> bool:
        """Whether the batch in progress was skipped (its loss is not recorded)."""
        return self.hooks._skipping

    def batch_loss(self, loss: Any) -> Any:
        """The loss to record for the batch ending now: ``loss``, or ``None`` if its step was skipped.

        A skipped step made no update: its loss is not the run's, nor are the losses its earlier
        micro-batches (gradient accumulation) gave before the step (one of them was NaN/Inf).
        """
        if not self.hooks._skipping:
            return loss
        if self.session is not None:
            self.guard.run("remedy skip", self.session.drop_step_loss)
        return None

    def check_grads(self, optimizer: Any) -> bool:
        """Skip ``optimizer``'s coming step if its gradients hold NaN/Inf (Lightning, closure-driven steps)."""
        return bool(self.guard.run("remedy skip", self.hooks.check, optimizer))

    def after_batch(self) -> None:
        """After ``session.end_batch``: decide and act once per optimizer step. Never raises.

        Under ``torch.distributed`` the broadcast runs outside every guarded site, on every rank at the
        same steps (optimizer steps are counted identically), so no rank waits alone.
        """
        session = self.session
        if session is None or self.stop_reason is not None:
            return
        self.guard.run("remedy skip", self._note_skips, session)
        step = session.step
        if step == self._last_step:
            return  # no optimizer step in this batch (gradient accumulation)
        self._last_step = step
        distributed = session.combiner.distributed
        if distributed and (self._broken or step % self.config.sync_every):
            return
        plan: Plan = (NONE, -1, False, -1)
        if session.combiner.writer:
            plan = self.guard.run("remedy plan", self._plan, session, step) or plan
        if distributed:
            plan = self._broadcast(plan)
        self.guard.run("remedy", self._apply, session, step, *plan)

    def _note_skips(self, session: SessionLike) -> None:
        steps, self.hooks.skipped_steps = self.hooks.skipped_steps, []
        self.hooks.end_step()
        for s in steps:
            self._hide(session, s, s)
            self._act(session, Remedy("skip", s, reason="NaN/Inf gradients", lr_factor=self.hooks.factor))

    # -- rank 0: the decision ------------------------------------------------------------
    def trigger(self, session: SessionLike) -> tuple[str, int] | None:
        """Why to roll back now and the onset, else ``None``.

        Fresh ``on`` diagnoses (seen by the advisors since the last rollback) and/or ``skip_limit``
        NaN/Inf steps in a row.
        """
        reasons, onsets = [], []
        for d in session.diagnoses:
            seen = d.last_step if d.last_step is not None else d.step
            if d.code in self.config.on and not d.resolved and seen >= self.acted_step:
                reasons.append(f"{d.code} at step {d.step}")
                onsets.append(d.step)
        n = self.hooks.skipped_in_row
        if n >= self.config.skip_limit:  # the weights broke some time before: a further keep_every back
            reasons.append(f"{n} NaN/Inf steps in a row")
            onsets.append(session.step - n - self.config.keep_every)
        return ("; ".join(reasons), min(onsets)) if reasons else None

    def _plan(self, session: SessionLike, step: int) -> Plan:
        """What every rank does now: (action, pending copy to promote, take a copy, pending copy to roll back to)."""
        keeper, cfg = self.keeper, self.config
        hit = self.trigger(session)
        if hit is not None:
            if self.attempts >= cfg.max_attempts:
                return (HALT, -1, False, -1)
            # the advisors check a few steps behind: a pending copy taken well before the onset is good too
            return (ROLLBACK, -1, False, keeper.newest_pending(hit[1] - cfg.confirm_steps))
        checked = session.advice.checked_step if session.advice is not None else -1
        promote = keeper.newest_pending(checked - cfg.confirm_steps)
        due = self._last_take is None or step - self._last_take >= cfg.keep_every
        # after a rollback, no copy until the advisors checked the steps since (and found nothing)
        healthy = self.hooks.skipped_in_row == 0 and checked >= self.acted_step
        return (NONE, promote, due and healthy, -1)

    def _broadcast(self, plan: Plan) -> Plan:
        flags = torch.tensor([float(x) for x in plan], dtype=torch.float64)
        try:
            flags = flags.to(collective_device())
            torch.distributed.broadcast(flags, src=0)
            action, promote, take, pending = (int(x) for x in flags.cpu().tolist())
            return (action, promote, bool(take), pending)
        except Exception as exc:
            self._broken = True
            warnings.warn(
                f"nndiag: the ranks could not agree on the remedy ({type(exc).__name__}: {exc}); "
                "it takes no more actions in this run.",
                NndiagInternalWarning,
                stacklevel=2,
            )
            return (NONE, -1, False, -1)

    # -- every rank: the action ------------------------------------------------------------
    def _apply(self, session: SessionLike, step: int, action: int, promote: int, take: bool, pending: int) -> None:
        if action != NONE:
            hit = self.trigger(session) if session.combiner.writer else None
            reason = hit[0] if hit is not None else "rank 0's diagnosis"
            keeper = self.keeper
            # the newest copy safely before the onset, else the confirmed one, else the oldest copy there is
            good = keeper.pending[pending] if 0 <= pending < len(keeper.pending) else keeper.good
            if good is None and keeper.pending:
                good = keeper.pending[0]
            if action == HALT or good is None:
                self._halt(session, step, reason if action == HALT else f"{reason}; no good state kept yet")
            else:
                self._rollback(session, step, good, reason)
            return
        if promote >= 0:
            self.keeper.promote(promote)
        good = self.keeper.good
        if (
            self.attempts
            and step - self.acted_step >= HEALTHY_RESET * self.config.keep_every
            and good is not None
            and good.step > self.acted_step
        ):
            self.attempts = 0  # a long healthy stretch since the last rollback: a later divergence is a fresh one
        if take:
            self.keeper.take(step, self.hooks.factor)
            self._last_take = step

    def _rollback(self, session: SessionLike, step: int, good: GoodState, reason: str) -> None:
        self.attempts += 1
        good_step = good.step
        if self.config.restore:
            self.keeper.restore(good)
        if good in self.keeper.pending:
            self.keeper.promote(self.keeper.pending.index(good))  # the run continues from it: the good state now
        self.keeper.discard_pending()
        self.hooks.factor *= self.config.lr_factor
        self.hooks.skipped_in_row = 0
        self._hide(session, good_step, step - 1)
        self.acted_step = step
        self._last_take = step  # the next copy comes keep_every steps after the restore
        lrs = [float(g["lr"]) * self.hooks.factor for opt in self.optimizers for g in opt.param_groups]
        record = Remedy("rollback", step, good_step, reason, self.hooks.factor, lrs, self.attempts)
        self._act(session, record, log_level="warning")

    def _halt(self, session: SessionLike, step: int, reason: str) -> None:
        text = f"{reason}; {self.attempts} of {self.config.max_attempts} rollbacks used" if self.attempts else reason
        record = Remedy("halt", step, reason=text, lr_factor=self.hooks.factor, attempt=self.attempts)
        self.stop_reason = f"nndiag stopped training: the remedy gave up at step {step}: {text}"
        self._act(session, record, log_level="error")

    def _hide(self, session: SessionLike, first: int, last: int) -> None:
        if last >= first:
            self.forgotten.append((first, last))
            session.forget(first, last)

    def _act(self, session: SessionLike, record: Remedy, log_level: str = "info") -> None:
        self.remedies.append(record)
        if session.combiner.writer:
            getattr(get_logger(), log_level)(f"nndiag remedy: {record.describe()}")
        session.publish(remedied_diagnosis(self.remedies, self.config.max_attempts))

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint: the factor, the attempts, the records (the good states are not saved)."""
        return {
            "lr_factor": self.hooks.factor,
            "attempts": self.attempts,
            "skipped": self.hooks.skipped,
            "acted_step": self.acted_step,
            "forgotten": [list(r) for r in self.forgotten],
            "remedies": [r.to_dict() for r in self.remedies],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a resumed run's remedy: the learning-rate cut keeps applying, the attempts keep counting."""
        self.hooks.factor = float(state.get("lr_factor", 1.0))
        self.attempts = int(state.get("attempts", 0))
        self.hooks.skipped = int(state.get("skipped", 0))
        self.acted_step = int(state.get("acted_step", -1))
        self.forgotten = [(int(a), int(b)) for a, b in state.get("forgotten", [])]
        self.remedies = [Remedy.from_dict(r) for r in state.get("remedies", [])]


def saved_state(state: Any) -> dict[str, Any] | None:
    """The remedy's part (``state["remedy"]``) of an adapter's saved state, or ``None``.

    Example:
        >>> saved_state({"step": 3, "remedy": {"attempts": 1}}), saved_state({"step": 3}), saved_state(None)
        ({'attempts': 1}, None, None)
    """
    remedy = state.get("remedy") if isinstance(state, Mapping) else None
    return dict(remedy) if isinstance(remedy, Mapping) else None


def with_state(
    state: dict[str, Any], runner: RemedyRunner | None, pending: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``state`` with the remedy's part: the running ``runner``'s, else a loaded one not yet in use (``pending``)."""
    remedy = runner.state_dict() if runner is not None else pending
    if remedy is not None:
        state["remedy"] = remedy
    return state
