"""Forward hooks that reduce every recorded module's output on the device.

Hooks are registered once and stay cheap when not armed: they return after a few
attribute checks (no tensor work on non-logging steps). In an eager model they are
also parked (taken off the modules, :mod:`nndiag.collect.hook_parking`) from the first
non-logging step until the next logging step, so quiet steps call the modules as
without nndiag. When armed, each module's output is reduced to a handful of on-device
scalars; nothing crosses to the host until the recorder packs the step.

Under ``torch.compile`` the per-module hooks are traced into the model's graph: their
reductions have no host synchronisation and no data-dependent shape (no graph break),
and they read the training flag before the armed flag. A compiled model therefore gets
two graphs more than without nndiag (logging steps, and the first logging step, which
also records the forward facts), whatever mix of logging, non-logging and evaluation
passes follows (see :func:`_root_hook_eager_as_frame` for the root's input hook).
Compiled graphs ignore hooks added after they were traced, so hooks are never parked
once dynamo has compiled anything in the process or traced one of these hooks.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.collect.activations import ActivationCollector
    >>> from nndiag.guard import ErrorGuard
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    >>> col = ActivationCollector(model, ErrorGuard())
    >>> col.attach(); col.arm()
    >>> _ = model(torch.randn(16, 4))
    >>> keys, values, extras = col.pack()
    >>> ("1", "_dead") in keys
    True
    >>> col.detach()

"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nndiag.collect.hook_parking import HookParking
from nndiag.collect.modules import (
    RELU_FAMILY,
    activation_name,
    float_tensors,
    is_channels_first,
    module_kind,
    recorded_modules,
    saturation_bounds,
)
from nndiag.guard import ErrorGuard
from nndiag.stats.activations import is_compiling, saturated_count, sufficient_stats, unit_max
from nndiag.stats.histogram import histogram

INPUT_LAYER = "input"


@dataclass
class _Accum:
    """One module's on-device sufficient statistics within a step (summed over repeated calls)."""

    n: int
    total: torch.Tensor  # sum of elements
    sq: torch.Tensor  # L2 norm of elements
    nonfinite: torch.Tensor | None = None  # None: known to be 0 (checked on CPU)
    peak: torch.Tensor | None = None  # per-unit max (dead units)
    minimum: torch.Tensor | None = None  # global min (does dead_frac apply?)
    sat: torch.Tensor | None = None  # saturated element count
    hist: torch.Tensor | None = None
    calls: int = 1


@dataclass
class _Static:
    """Per-module constants computed once."""

    activation: str | None
    relu_family: bool
    sat_bounds: tuple[float | None, float | None] | None
    channels_first: bool
    elementwise: bool


@dataclass
class ForwardFacts:
    """What the first armed forward pass revealed (order, shapes, batch size)."""

    order: list[str] = field(default_factory=list)
    out_shapes: dict[str, list[int]] = field(default_factory=dict)
    batch_size: int | None = None


class ActivationCollector:
    """Owns the forward hooks of one model and their per-step reductions."""

    def __init__(
        self, model: nn.Module, guard: ErrorGuard, histograms: bool = False, bins: int = 30, park: bool = True
    ) -> None:
        self.model: nn.Module | None = model
        self.guard = guard
        self.histograms = histograms
        self.bins = bins
        self.modules = recorded_modules(model)
        self.static = {name: self._static(mod) for name, mod in self.modules}
        self.handles: list[RemovableHandle] = []
        self.armed = False
        self.full = True  # per-unit maxima and minima too (dead units)
        self.acc: dict[str, _Accum] = {}
        self.input_acc: _Accum | None = None
        self.facts = ForwardFacts()
        self.observer: Any = None  # sees the forward's keywords and each module's output when armed (TaskProbe)
        self._facts_done = False
        self._last_layout: tuple[torch.Size, bool] | None = None
        self._eager_rule = False  # the root hook's frame rule is set (see arm)
        self.parking = HookParking([])
        # the hooks stay registered: not to park, or dynamo traced one (a compiled graph ignores hooks put back)
        self.pinned = not park

    @staticmethod
    def _static(mod: nn.Module) -> _Static:
        act = activation_name(mod)
        kind = module_kind(mod)
        return _Static(
            activation=act,
            relu_family=act in RELU_FAMILY,
            sat_bounds=saturation_bounds(mod),
            channels_first=is_channels_first(mod),
            elementwise=kind in ("activation", "dropout"),
        )

    # -- hook management -------------------------------------------------------------
    def attach(self) -> None:
        """Register the forward hooks (idempotent)."""
        if self.handles or self.model is None:
            return
        self.handles.append(self.model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True))
        for name, mod in self.modules:
            self.handles.append(mod.register_forward_hook(self._make_hook(name)))
        self.parking = HookParking(self.handles)

    def detach(self) -> None:
        """Remove every hook and drop the references to the model and to step tensors."""
        for h in self.handles:
            h.remove()  # (a parked hook is off its module already)
        self.handles.clear()
        self.parking = HookParking([])
        self.model = None
        self.modules = []
        self.reset()

    def arm(self, full: bool = True) -> None:
        """Record the next forward pass(es) until :meth:`disarm`.

        ``full=False`` (a light logging step): means, stds, non-finite and saturated counts only, not
        the per-unit maxima and minima that dead units are counted from.
        """
        if self.parking.is_parked:
            self.guard.run("hook parking", self.parking.restore)
        self.armed = True
        self.full = full
        if not self._eager_rule and "torch._dynamo" in sys.modules:  # torch.compile in use (or may be): see there
            _root_hook_eager_as_frame()
            self._eager_rule = True  # once per collector (an import and a dynamo call: ~20 us a logging step)

    def disarm(self) -> None:
        """Stop recording (results so far are kept until :meth:`pack` or :meth:`reset`)."""
        self.armed = False

    def park(self) -> None:
        """Take the hooks off the modules until the next :meth:`arm` (a non-logging step), where that is safe.

        Only after the hooks recorded a training forward (a model compiled at its first call has traced them
        by then), and not under ``torch.compile``: once dynamo has looked at any frame in this process, or
        traced one of these hooks, they stay registered (a graph traced while they were parked would never
        call them). Compiling the model only after that, in the middle of a run, is not detected.
        """
        if self.armed or self.parking.is_parked or self.pinned or not self._facts_done or not self.parking.supported:
            return
        if _dynamo_used():
            self.pinned = True  # (checked once: from now on the hooks stay)
            return
        self.parking.park()

    def reset(self) -> None:
        """Forget the current step's reductions."""
        self.acc = {}
        self.input_acc = None
        self._last_layout = None

    # -- hooks -----------------------------------------------------------------------
    def _root_pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not module.training or not self.armed or self.input_acc is not None:
            return  # (training first: under torch.compile an eval pass then guards on it alone)
        self.guard.run("input statistics", self._record_input, (args, kwargs))
        if self.observer is not None and kwargs:
            self.guard.run("task input", self.observer.saw_input, kwargs)

    def _record_input(self, obj: Any) -> None:
        # attempted for this step: if what follows fails, no module's hook retries it (one report, and the modules'
        # own statistics are kept); integer inputs (token ids) keep it, so the first-leaf fallback does not fire
        self.input_acc = _Accum(0, torch.zeros(()), torch.zeros(()))
        if self.facts.batch_size is None:
            self.facts.batch_size = self.guard.run("forward facts", _batch_size, obj)
        # 0-d tensors are counts, not the input (the HF Trainer passes ``num_items_in_batch`` as a keyword)
        tensors = [t for t in float_tensors(obj) if t.dim() > 0]
        if tensors:
            self.input_acc = _accumulate(tensors[0].detach())

    def _make_hook(self, name: str):  # noqa: ANN202 - closure
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if is_compiling():  # (dynamo folds it to True while tracing)
                self.pinned = True  # (dynamo replays this store; nothing toggles it back)
            model = self.model
            if (model is not None and not model.training) or not self.armed:
                return  # an evaluation pass between training batches, or not a logging step
            self.guard.run("activation statistics", self._record, name, args, output)

        return hook

    def _record(self, name: str, args: tuple[Any, ...], output: Any) -> None:
        if self.input_acc is None:  # root forward not called (e.g. training_step calls self.model)
            self.guard.run("input statistics", self._record_input, args)
        tensors = float_tensors(output)
        if not tensors:
            return
        if self.observer is not None:
            self.observer.saw_output(output)
        x = tensors[0].detach() if len(tensors) == 1 else torch.cat([t.detach().reshape(-1) for t in tensors])
        st = self.static[name]
        unit_dim = self._unit_dim(st, tensors[0])
        new = _accumulate(x)
        if x.dim() >= 1 and x.numel() > 0:
            if len(tensors) == 1 and self.full:
                new.peak = unit_max(x, unit_dim)
                if not st.relu_family:
                    new.minimum = x.amin()
            if st.sat_bounds is not None:
                new.sat = saturated_count(x, *st.sat_bounds)
        if self.histograms:
            new.hist = histogram(x, self.bins)
        if not self._facts_done and name not in self.facts.out_shapes:
            self.facts.order.append(name)
            self.facts.out_shapes[name] = list(tensors[0].shape)
        old = self.acc.get(name)
        self.acc[name] = new if old is None else _merge(old, new)

    def _unit_dim(self, st: _Static, x: torch.Tensor) -> int:
        """Dim holding the units: features of 2-D outputs, channels of conv-style outputs."""
        shape = x.shape
        if x.dim() != 3:
            channels_first = x.dim() >= 4
        elif st.channels_first:
            channels_first = True
        elif st.elementwise and self._last_layout is not None and self._last_layout[0] == shape:
            channels_first = self._last_layout[1]  # an activation after a Conv1d keeps its layout
        else:
            channels_first = False
        self._last_layout = (shape, channels_first)
        return 1 if channels_first else -1

    # -- packing ---------------------------------------------------------------------
    def pack(self) -> tuple[list[tuple[str, str]], list[torch.Tensor], list[tuple[str, str, float]]]:
        """This step's raw statistics: keys and 0-d on-device tensors, plus host-known values.

        The raw statistics are finalised on the host (:mod:`nndiag.stats.finalize`).
        Also completes :attr:`facts` after the first armed pass.
        """
        keys: list[tuple[str, str]] = []
        values: list[torch.Tensor] = []
        extras: list[tuple[str, str, float]] = []
        items = list(self.acc.items())
        if self.input_acc is not None and self.input_acc.n > 0:
            items.insert(0, (INPUT_LAYER, self.input_acc))
        for name, acc in items:
            keys += [(name, "_sum"), (name, "_sq")]
            values += [acc.total, acc.sq]
            extras.append((name, "_n", float(acc.n)))
            if acc.nonfinite is not None:
                keys.append((name, "_nonfinite"))
                values.append(acc.nonfinite)
            if acc.peak is not None:
                keys.append((name, "_dead"))
                values.append((acc.peak <= 0).sum())
                extras.append((name, "_units", float(acc.peak.numel())))
                if acc.minimum is None:
                    extras.append((name, "_relu", 1.0))
                else:
                    keys.append((name, "_min"))
                    values.append(acc.minimum)
            if acc.sat is not None:
                keys.append((name, "_sat"))
                values.append(acc.sat)
        if self.acc:
            self._facts_done = True
        return keys, values, extras

    def histograms_packed(self) -> tuple[list[str], list[torch.Tensor]]:
        """Layer names and packed histograms (edges then counts) of this step's outputs."""
        names = [n for n, a in self.acc.items() if a.hist is not None]
        return names, [self.acc[n].hist for n in names]  # type: ignore[misc]


def _accumulate(x: torch.Tensor) -> _Accum:
    total, sq, nonfinite = sufficient_stats(x)
    return _Accum(x.numel(), total, sq, nonfinite)


def _merge(a: _Accum, b: _Accum) -> _Accum:
    """Combine two calls of the same module within one forward pass."""
    out = _Accum(a.n + b.n, a.total + b.total, torch.hypot(a.sq, b.sq), calls=a.calls + 1)
    if a.nonfinite is not None or b.nonfinite is not None:
        out.nonfinite = sum(t for t in (a.nonfinite, b.nonfinite) if t is not None)  # type: ignore[assignment]
    if a.peak is not None and b.peak is not None and a.peak.shape == b.peak.shape:
        out.peak = torch.maximum(a.peak, b.peak)
    else:
        out.peak = a.peak
    if a.minimum is not None and b.minimum is not None:
        out.minimum = torch.minimum(a.minimum, b.minimum)
    if a.sat is not None and b.sat is not None:
        out.sat = a.sat + b.sat
    out.hist = a.hist
    return out


def _dynamo_used() -> bool:
    """Whether dynamo has looked at any frame in this process (``torch.compile`` in use somewhere)."""
    if "torch._dynamo" not in sys.modules:
        return False
    try:
        from torch._dynamo.utils import counters

        return bool(counters["frames"]["total"])
    except Exception:  # a torch without these counters: assume compiled, keep the hooks
        return True


def _batch_size(obj: Any) -> int | None:
    """Leading dimension of the first tensor (of any dtype) in ``obj``."""
    stack = [obj]
    while stack:
        item = stack.pop(0)
        if isinstance(item, torch.Tensor):
            return int(item.shape[0]) if item.dim() >= 1 else None
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
    return None


def _root_hook_eager_as_frame() -> None:
    """Have dynamo run the root's input hook eagerly where it meets the hook as a frame of its own.

    A compiled user-defined module (``torch.compile(model)``, ``model.compile()``) runs its root's
    hooks from ``Module._call_impl``, which dynamo does not trace, so each hook is a frame of its
    own: compiled, the input hook adds a small graph (and a graph call) to every logging step, and
    once a non-logging pass gave dynamo an empty graph it skips the hook and compiles
    ``ErrorGuard.run`` separately. Where the hook is traced inline (a compiled ``training_step``
    calling ``self(x)``, a compiled ``nn.Sequential``) it stays in the caller's graph: a
    ``torch.compiler.disable`` would break that graph on every step. Best effort (private dynamo
    API): where it is missing, the hook's own frame is compiled as described.
    """
    with contextlib.suppress(Exception):
        from torch._dynamo.eval_frame import FrameAction, FrameExecStrategy, set_code_exec_strategy

        skip = FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP)  # this frame and its callees
        set_code_exec_strategy(ActivationCollector._root_pre_hook.__code__, skip)
