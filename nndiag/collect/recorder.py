"""The framework-independent recording engine shared by the Lightning callback and ``Monitor``.

A *step* is an optimizer step. The recorder counts them with the optimizers' own step
hooks, so gradient accumulation (no step on most batches), AMP steps skipped by the
GradScaler (``optimizer.step`` never runs) and several optimizers (one step per batch
in which any optimizer stepped) are counted correctly.

Lifecycle, driven by an adapter::

    rec.attach()
    for each batch:
        rec.begin_batch()            # arms the forward hooks on logging steps
        ... forward, backward ...
        rec.capture_grads(opt)       # optional: where grads are final (Lightning)
        ... optimizer.step() ...     # hooks: snapshot weights / mark stepped
        rec.end_batch(loss)          # finishes the step if an optimizer stepped
    rec.close()

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.collect.recorder import Recorder
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> packets = []
    >>> rec = Recorder(model, [opt], submit=packets.append)
    >>> rec.attach()
    >>> for _ in range(3):
    ...     rec.begin_batch()
    ...     loss = model(torch.randn(16, 4)).pow(2).mean()
    ...     loss.backward(); opt.step(); opt.zero_grad()
    ...     rec.end_batch(loss)
    >>> rec.close()
    >>> from nndiag.collect.packet import Packet
    >>> rec.step, [p.step for p in packets if isinstance(p, Packet) and p.keys]
    (3, [0, 1, 2])

"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from nndiag import quantities as Q
from nndiag.collect.activations import ActivationCollector
from nndiag.collect.distributed import Combined, LocalCombiner, RankCombiner, StepPayload
from nndiag.collect.facts import build_model_facts, initial_weight_facts, module_facts
from nndiag.collect.lrs import lr_copy, lr_entries, step_closure
from nndiag.collect.noise_scale import NoiseScaleCollector
from nndiag.collect.packet import Packet
from nndiag.collect.params import ParamCollector
from nndiag.collect.step_losses import StepLosses
from nndiag.collect.task_probe import TaskProbe
from nndiag.config import RecorderConfig
from nndiag.facts import InitFacts, ModelFacts
from nndiag.guard import ErrorGuard
from nndiag.schedule import Schedule, is_full_step, resolve_schedule

KEEP_COPY_GAP = 10  # steps: a logging step at most this far ahead keeps the weight copy (default schedule: to step 200)


class Recorder:
    """Collects one model's statistics on logging steps and hands packets to ``submit``."""

    def __init__(
        self,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        submit: Callable[[Any], None],
        config: RecorderConfig | None = None,
        schedule: Schedule = None,
        guard: ErrorGuard | None = None,
        start_step: int = 0,
        combiner: LocalCombiner | RankCombiner | None = None,
        init_facts: dict[str, InitFacts] | dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.config = config or RecorderConfig()
        self.combiner = combiner or LocalCombiner()
        self.should_log = resolve_schedule(schedule)
        self.guard = guard or ErrorGuard()
        self.submit = submit
        self.model: nn.Module | None = model
        self.optimizers = list(optimizers)
        cfg = self.config
        self.acts = ActivationCollector(model, self.guard, cfg.histograms, cfg.histogram_bins, cfg.park_hooks)
        self.params = ParamCollector(model, self.config.update_ratio, self.config.update_ratio_samples)
        self.task = TaskProbe(self.guard)  # targets, model output, loss kind (logging steps)
        self.noise = NoiseScaleCollector(self.params.named)  # gradient noise scale (logging steps)
        self.acts.observer = self.task
        self.step = start_step
        self._handles: list[Any] = []
        self._hooked_optimizers = 0
        self._logging = False
        self._full = False  # a full logging step: update ratios, weight norms, output statistics too
        self._last_full: int | None = None
        self._acts_done = False
        self._stepped = False
        self._grads_captured = False
        self.losses = StepLosses()  # every step's loss, on the device until a packet carries it
        self._facts_sent = False
        self._step_lrs: dict[int, list[Any]] = {}  # logging steps: each optimizer's lrs as its step used them
        self._payload: StepPayload | None = None  # distributed: this rank's statistics awaiting the exchange
        self._start_step = start_step
        # a run that starts past step 0 (resumed) has trained weights: its "initial" weights are the
        # original run's (passed in) or unknown, never the weights it resumes with
        self._init_facts: dict[str, InitFacts] = {
            k: v if isinstance(v, InitFacts) else InitFacts.from_dict(v) for k, v in (init_facts or {}).items()
        }
        self.closed = False

    # -- setup / teardown ------------------------------------------------------------
    def attach(self) -> None:
        """Register forward hooks and optimizer step hooks; record the initial weights' statistics."""
        if self._start_step == 0:
            self._init_facts = self.guard.run("initial weight statistics", initial_weight_facts, self.model) or {}
        self.acts.attach()
        for opt in self.optimizers:
            pre = getattr(opt, "register_step_pre_hook", None)
            post = getattr(opt, "register_step_post_hook", None)
            if pre is None or post is None:
                continue  # not a torch optimizer: every end_batch counts as a step
            self._handles.append(pre(self._pre_step_hook))
            self._handles.append(post(self._post_step_hook))
            self._hooked_optimizers += 1

    def close(self) -> None:
        """Send what is pending, remove every hook and drop references to the model."""
        if self.closed:
            return
        self.closed = True
        self.guard.run("final flush", self._flush_losses)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.acts.detach()
        self.task.release()
        self.params.release()
        self.noise.release()
        self.model = None
        self.optimizers = []
        self.losses.drop_step()  # a batch in progress at close never finished its step: nothing of it is sent

    # -- per-batch protocol ----------------------------------------------------------
    def begin_batch(self) -> None:
        """Arm the forward hooks if the coming optimizer step is a logging step."""
        if self.closed:
            return
        self._logging = bool(self.guard.run("schedule", self.should_log, self.step))
        self._full = self._logging and is_full_step(self.step, self._last_full, self.config.full_every)
        if self._logging and not self._acts_done:
            self.acts.arm(self._full)
        if self._logging:
            self.task.arm()
            self.noise.arm()
        else:
            self.guard.run("hook parking", self.acts.park)  # quiet steps: modules called as without nndiag

    def capture_grads(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Record gradient norms now (of ``optimizer``'s parameters, or all), on logging steps."""
        if self._logging and not self.closed:
            params = None if optimizer is None else _owned(optimizer)
            self.guard.run("gradient statistics", self.params.capture_grads, params)
            self._grads_captured = True

    def _pre_step_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._logging and not self.closed:
            self._step_lrs.setdefault(id(optimizer), [lr_copy(g.get("lr")) for g in optimizer.param_groups])
            if step_closure(optimizer, args, kwargs) is None:  # with a closure, backward runs inside step(): too early
                self.guard.run("gradient statistics", self.params.capture_grads, _owned(optimizer))
            if self._full:  # the sole optimizer's own update may be readable (SGD with momentum: no weight copy)
                sole = optimizer if self.optimizers == [optimizer] else None
                self.guard.run("weight snapshot", self.params.snapshot, sole)

    def _post_step_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._stepped = True
        if self.params.sgd is not None:  # which parameters moved (after a closure, known only now)
            self.guard.run("weight snapshot", self.params.stepped, optimizer)
        if self._logging and not self.closed and step_closure(optimizer, args, kwargs) is not None:
            # closure-driven step: gradients not captured after the closure (Lightning's
            # on_before_optimizer_step) are read now, as the closure computed them
            self.guard.run("gradient statistics", self.params.capture_grads, _owned(optimizer))

    def end_batch(self, loss: Any = None, target: Any = None) -> None:
        """Close a batch: keep its loss; finish the step if an optimizer stepped during it.

        ``target`` (optional): the batch's targets, summarised on the first logging steps (task facts).
        """
        if self.closed:
            return
        if not self._logging and not self.combiner.distributed:
            self._end_quiet_batch(loss)
            return
        self.acts.disarm()
        if self._logging:
            self.note_task(loss, target)
        self.task.disarm()
        if self._logging:
            self._acts_done = True
        if loss is not None:
            self.guard.run("loss", self.losses.keep, loss)
        stepped = self._stepped or self._hooked_optimizers == 0
        if not stepped:
            if self._grads_captured:  # gradients were final but the step was skipped (AMP overflow)
                self.params.reset()
                self.noise.reset()
                self._grads_captured = False
                # the skipped batches belong to no step: drop their loss and activations
                self.losses.drop_step()
                self.acts.reset()
                self._acts_done = False
                self._step_lrs = {}
            return
        self.guard.run("step", self._finish_step)
        if self.combiner.distributed:
            self._exchange()  # outside every guard site: a rank must never skip a collective the others enter
        # even if finishing the step failed: nothing of this step may leak into the next one
        self.losses.drop_step()
        self.acts.reset()
        self.task.release()
        self.params.reset()
        self.noise.reset()
        if self._full:
            self._last_full = self.step
        self.step += 1
        self._step_lrs = {}
        self._stepped = False
        self._grads_captured = False
        self._acts_done = False

    def _end_quiet_batch(self, loss: Any) -> None:
        """:meth:`end_batch` of a non-logging step in one process: nothing was armed or captured, nothing to reset.

        Most steps are these; just after the step's kernels nndiag's code and data are out of the
        caches, so each call costs several times its warm time (MLP: 60-67 -> 38-39 us of CPU per step).
        """
        if loss is not None:
            self.guard.run("loss", self.losses.keep, loss)
        if self._stepped or self._hooked_optimizers == 0:  # else accumulating (or AMP skipped): the loss waits
            self.guard.run("step", self._finish_step)
            self.step += 1
            self._stepped = False

    def note_task(self, loss: Any = None, target: Any = None) -> None:
        """Show the task probe this logging step's loss tensor (its graph intact) and/or targets."""
        if target is not None:
            self.guard.run("task targets", self.task.note_target, target)
        if loss is not None:
            self.guard.run("task loss", self.task.note_loss, loss)

    def drop_step_loss(self) -> None:
        """Forget the losses kept for the optimizer step in progress (it was skipped: nothing came of it)."""
        self.losses.drop_step()

    # -- internals -------------------------------------------------------------------
    def _finish_step(self) -> None:
        self.losses.end_step(self.step)
        if self._logging:
            if self.combiner.distributed:
                self._payload = self.guard.run("step statistics", self._local_step)  # exchanged in end_batch
            else:
                # a site of its own: failing statistics must cost neither this step's loss nor (once the
                # site is switched off) the losses of all later steps
                self.guard.run("step statistics", self._send_logging_step)
                self._flush_losses()  # no-op when the logging packet carried the losses
            if not self.guard.run("schedule", self._logging_soon):
                self.params.release_buffer()  # the weight copy is kept only while logging steps are close
        elif not self.combiner.distributed and len(self.losses) >= self.config.max_pending_losses:
            self._flush_losses()

    def _logging_soon(self) -> bool:
        """Whether one of the next ``KEEP_COPY_GAP`` steps logs (then the weight copy is kept for it).

        A fresh copy costs page faults (~1 ms per 5 MB on CPU); a kept one, memory between logging steps.
        """
        return any(self.should_log(self.step + k) for k in range(1, KEEP_COPY_GAP + 1))

    def _exchange(self) -> None:
        """Distributed: combine this rank's statistics with the others' (every rank, same steps).

        Due on logging steps, and every ``max_pending_losses`` steps for the losses alone: both
        depend only on the step count, which every rank shares.
        """
        combiner = self.combiner
        assert isinstance(combiner, RankCombiner)
        if not (self._logging or combiner.steps_pending(self.step) >= self.config.max_pending_losses):
            return
        payload, self._payload = self._payload, None
        taken = self.guard.run("loss", self.losses.take)
        losses, steps = taken if taken is not None else (None, [])
        combined = combiner.exchange(self.step, payload, losses, steps)
        if combined is not None:
            self.guard.run("step statistics", self._submit, combined)

    def _flush_losses(self) -> None:
        if len(self.losses):
            losses, steps = self.losses.take()
            self.submit(Packet.build(self.step, losses, steps))

    def _send_logging_step(self) -> None:
        payload = self._local_step()
        losses, loss_steps = self.losses.take()
        self._submit(Combined(payload, losses, loss_steps))

    def _local_step(self) -> StepPayload:
        """This rank's statistics of the current logging step (on the device; nothing sent yet)."""
        # each part is its own site: a failing part costs only its own statistics
        acts = self.guard.run("activation packing", self.acts.pack) or ([], [], [])
        gns = self.guard.run(  # before params.pack, which resets the gradient norms it reads
            "noise scale", self.noise.pack, self.params.grad_norms, self.acts.facts.batch_size
        ) or ([], [], [])
        pars = self.guard.run("parameter statistics", self.params.pack, self._full) or ([], [])
        task = ([], []) if self.combiner.distributed else self.guard.run("task packing", self.task.pack, self._full)
        task = task or ([], [])
        keys = acts[0] + pars[0] + task[0] + gns[0]
        scalars = acts[1] + pars[1] + task[1] + gns[1]
        extras = acts[2] + gns[2]
        lr_keys, lr_values, lr_extras = lr_entries(self.optimizers, self._step_lrs)
        keys += lr_keys
        scalars += lr_values
        extras += lr_extras
        hist_keys: list[tuple[str, str]] = []
        hists: list[torch.Tensor] = []
        if self.config.histograms:
            names, hists = self.acts.histograms_packed()
            hist_keys = [(n, Q.ACT_HIST) for n in names]
        peaks = {}
        if self.combiner.distributed:  # per-unit maxima: a unit is dead only if dead on every rank
            peaks = {n: a.peak for n, a in self.acts.acc.items() if a.peak is not None}
        return StepPayload(keys, scalars, extras, hist_keys, hists, peaks, self._full)

    def _submit(self, step: Combined) -> None:
        """Hand one (combined) step to the writer as a single packet; model facts after the first."""
        p = step.payload or StepPayload()
        losses = step.losses
        if losses is not None and p.values:
            losses = losses.to(p.values[0].device)
        self.submit(
            Packet.build(
                self.step,
                losses,
                step.loss_steps,
                p.keys,
                p.values,
                p.extras,
                p.hist_keys,
                p.hists,
                self.config.histogram_bins,
            )
        )
        if step.payload is not None and self.guard.run("task facts", self.task.facts_update) is not None:
            self._facts_sent = False  # the task facts changed: send the facts again
        if step.payload is not None and not self._facts_sent:
            self._facts_sent = True
            facts = self.guard.run("model facts", self.facts)
            if facts is not None:
                self.submit(("facts", facts))

    # -- model facts -----------------------------------------------------------------
    def facts(self) -> ModelFacts:
        """Model facts: per-layer kind, activation, forward order, fan-in; BatchNorm; batch size."""
        assert self.model is not None
        ff = self.acts.facts
        modules = [(name, module_facts(mod)) for name, mod in self.acts.modules]
        facts = build_model_facts(
            self.model,
            modules,
            ff.order,
            ff.out_shapes,
            ff.batch_size,
            self.optimizers,
            self._init_facts,
            self._start_step,
        )
        task = self.task.task_facts()
        if task:
            facts.extra["task"] = task
        return facts


def _owned(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters ``optimizer`` steps."""
    return [p for g in optimizer.param_groups for p in g["params"]]
