"""nndiag never breaks training: odd module outputs and parameters, internal errors, bad configuration, bad disks."""

from __future__ import annotations

import dataclasses
import math
import re
import sqlite3
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from helpers import fit, loader, make_module, stat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nndiag.collect.activations
from nndiag import DiagnosticsCallback, Monitor, RecorderConfig, load_run
from nndiag.collect.params import ParamCollector
from nndiag.demo.models import blobs, mlp
from nndiag.guard import NndiagInternalWarning
from nndiag.store.writer import RunStore

ACT_STATS = {"act_mean", "act_std", "nonfinite", "dead_frac", "sat_frac"}


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


class Caught:
    """Warnings recorded during a block, with nndiag's internal ones split by site."""

    def __init__(self, records: list[warnings.WarningMessage]) -> None:
        self.records = records

    @property
    def internal(self) -> list[str]:
        return [str(w.message) for w in self.records if issubclass(w.category, NndiagInternalWarning)]

    def sites(self) -> list[str]:
        """Sites of the internal-error reports (one entry per report)."""
        out = []
        for msg in self.internal:
            m = re.match(r"nndiag: internal error in '(.+?)'", msg)
            if m:
                out.append(m.group(1))
        return out


@pytest.fixture
def caught() -> Iterator[Caught]:
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        yield Caught(records)


def train(
    model: nn.Module,
    n_steps: int = 4,
    batch: Callable[[int], torch.Tensor] | None = None,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    log_dir: Any = None,
    opt: torch.optim.Optimizer | None = None,
    **options: Any,
) -> Monitor:
    """A plain loop of ``n_steps`` optimizer steps under a Monitor (schedule=1)."""
    opt = opt or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    batch = batch or (lambda i: torch.randn(8, 4, generator=torch.Generator().manual_seed(i)))
    loss_fn = loss_fn or (lambda out: out.float().pow(2).mean())
    options.setdefault("schedule", 1)
    with Monitor(model, opt, log_dir=log_dir, **options) as mon:
        for i in range(n_steps):
            loss = loss_fn(model(batch(i)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    assert mon.steps == n_steps
    return mon


def values(history: Any, stat_name: str, layer: str) -> list[float]:
    return stat(history, stat_name, layer).sort_values("step").value.tolist()


# --------------------------------------------------------------------------------------
# module outputs of every shape
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Output:
    value: torch.Tensor
    mask: torch.Tensor
    name: str = "out"


def _float_parts(obj: Any) -> list[torch.Tensor]:
    """The floating tensors an output is made of (the test's own reference of what is measurable)."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else []
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _float_parts(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _float_parts(v)]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in _float_parts(getattr(obj, f.name))]
    return []


OUTPUTS: dict[str, Callable[[torch.Tensor], Any]] = {
    "tuple": lambda h: (h * 2.0, h.sum(-1)),
    "nested-list-mixed-dtypes": lambda h: [h.half(), [h.double() + 1.0, None]],
    "dict": lambda h: {"a": h + 1.0, "idx": h.argmax(-1), "none": None},
    "dataclass": lambda h: Output(value=h * 3.0, mask=h > 0),
    "none": lambda h: None,
    "int-tensor": lambda h: h.argmax(-1),
    "bool-tensor": lambda h: h > 0,
    "complex-tensor": lambda h: torch.complex(h, -h),
    "float16": lambda h: h.half(),
    "bfloat16": lambda h: h.bfloat16(),
    "scalar": lambda h: h.sum(),
}


class Probe(nn.Module):
    """A leaf whose output is anything; the model does not use it (it must only be observed)."""

    def __init__(self, make: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.make = make
        self.outputs: list[Any] = []

    def forward(self, h: torch.Tensor) -> Any:
        out = self.make(h)
        if self.training:
            self.outputs.append(out)
        return out


class ProbeNet(nn.Module):
    def __init__(self, probe: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.probe = probe
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        self.probe(h.detach())
        return self.head(torch.tanh(h))


@pytest.mark.parametrize("kind", [pytest.param(k, id=k) for k in OUTPUTS])
def test_module_output_types(kind: str, caught: Caught) -> None:
    torch.manual_seed(0)
    probe = Probe(OUTPUTS[kind])
    mon = train(ProbeNet(probe), n_steps=4)
    assert caught.internal == []
    h = mon.history
    assert sorted(stat(h, "loss", "").step) == [0, 1, 2, 3]
    assert sorted(stat(h, "grad_norm", "head.weight").step) == [0, 1, 2, 3]
    parts = [_float_parts(o) for o in probe.outputs]
    if not parts[0]:  # nothing measurable: no rows, and nothing else disturbed
        assert h[h.layer == "probe"].empty
        assert values(h, "act_mean", "head") != []
        return
    flat = [torch.cat([t.detach().double().reshape(-1) for t in p]) for p in parts]
    assert values(h, "act_mean", "probe") == pytest.approx([float(f.mean()) for f in flat], rel=1e-3, abs=1e-3)
    assert values(h, "act_std", "probe") == pytest.approx(
        [float(f.std(unbiased=False)) for f in flat], rel=1e-3, abs=1e-3
    )
    assert values(h, "nonfinite", "probe") == [0.0] * 4




class SharedAct(nn.Module):
    """One Tanh module used twice per forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 8)
        self.act = nn.Tanh()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x) * 3.0))))


def test_shared_module_called several_times_per_forward(caught: Caught) -> None:
    torch.manual_seed(0)
    model = SharedAct()
    calls: list[list[torch.Tensor]] = []

    def spy(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
        if not calls or len(calls[-1]) == 2:
            calls.append([])
        calls[-1].append(out.detach().reshape(-1).double())

    model.act.register_forward_hook(spy)
    mon = train(model, n_steps=4)
    assert caught.internal == []
    h = mon.history
    both = [torch.cat(c) for c in calls]
    assert all(len(c) == 2 for c in calls)
    assert values(h, "act_mean", "act") == pytest.approx([float(b.mean()) for b in both], rel=1e-5, abs=1e-7)
    assert values(h, "act_std", "act") == pytest.approx([float(b.std(unbiased=False)) for b in both], rel=1e-5)
    sat = [float((b.abs() >= 0.99).double().mean()) for b in both]
    assert values(h, "sat_frac", "act") == pytest.approx(sat, abs=1e-9)
    assert any(s > 0 for s in sat), "the test wants some saturation to count"
