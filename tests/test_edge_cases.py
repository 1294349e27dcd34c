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


def test_shared_module_called_several_times_per_forward(caught: Caught) -> None:
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


# --------------------------------------------------------------------------------------
# parameters: frozen, outside the optimizer, without gradient
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "in_optimizer", [pytest.param(True, id="frozen-in-optimizer"), pytest.param(False, id="frozen-not-in-optimizer")]
)
def test_frozen_parameters(in_optimizer: bool, caught: Caught) -> None:
    torch.manual_seed(0)
    model = mlp(4, 2, hidden=8, depth=1)
    model[0].requires_grad_(False)
    params = model.parameters() if in_optimizer else model[2].parameters()
    mon = train(model, n_steps=3, opt=torch.optim.SGD(params, lr=0.1, momentum=0.9))
    assert caught.internal == []
    h = mon.history
    param_rows = h[h.stat.isin({"grad_norm", "weight_norm", "update_ratio"})]
    assert set(param_rows.layer) == {"2.weight", "2.bias"}, "no statistics for frozen parameters"
    assert sorted(stat(h, "update_ratio", "2.weight").step) == [0, 1, 2]
    assert (stat(h, "update_ratio", "2.weight").value > 0).all()
    assert sorted(stat(h, "act_mean", "0").step) == [0, 1, 2], "a frozen layer's outputs are still recorded"


def test_parameters_missing_from_optimizer(caught: Caught) -> None:
    torch.manual_seed(0)
    model = mlp(4, 2, hidden=8, depth=1)
    opt = torch.optim.SGD(model[2].parameters(), lr=0.1)  # model[0] is trainable but never stepped
    grads: list[dict[str, float]] = []
    with Monitor(model, opt, log_dir=None, schedule=1) as mon:
        for _ in range(3):
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()  # leaves model[0]'s gradients (it is not in the optimizer)
            grads.append({n: float(p.grad.norm()) for n, p in model[0].named_parameters(prefix="0")})
            mon.step()
    assert caught.internal == []
    h = mon.history
    for name in ("0.weight", "0.bias"):
        assert values(h, "update_ratio", name) == [0.0, 0.0, 0.0]
        assert values(h, "grad_norm", name) == pytest.approx([g[name] for g in grads], rel=1e-5)
        assert all(v > 0 for v in values(h, "grad_norm", name))
    for name in ("2.weight", "2.bias"):
        assert all(v > 0 for v in values(h, "update_ratio", name))
    facts = mon.session.facts["params"]
    assert facts["0.weight"]["in_optimizer"] is False
    assert facts["2.weight"]["in_optimizer"] is True


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 2)  # never called: its parameters never get a gradient
        self.scale = nn.Parameter(torch.ones(2))  # gets a gradient only on even steps
        self.step = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.used(x)
        if self.training:
            self.step += 1
            if self.step % 2 == 1:
                out = out * self.scale
        return out


@pytest.mark.parametrize(
    "make_opt",
    [
        pytest.param(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), id="sgd-momentum"),
        pytest.param(lambda p: torch.optim.Adam(p, lr=0.01), id="adam"),
    ],
)
def test_parameter_without_gradient(make_opt: Callable[..., torch.optim.Optimizer], caught: Caught) -> None:
    torch.manual_seed(0)
    model = WithUnused()
    mon = train(model, n_steps=4, opt=make_opt(model.parameters()), loss_fn=lambda out: (out - 1.0).pow(2).mean())
    assert caught.internal == []
    h = mon.history
    for name in ("unused.weight", "unused.bias"):
        assert values(h, "grad_norm", name) == [0.0] * 4
        assert values(h, "update_ratio", name) == [0.0] * 4
    scale = values(h, "grad_norm", "scale")
    assert scale[0] > 0
    assert scale[1] == 0.0  # zero_grad(set_to_none=True): no gradient at all on step 1
    assert all(v > 0 for v in values(h, "grad_norm", "used.weight"))
    assert h[h.layer == "unused"].empty, "a module never called has no activation rows"


# --------------------------------------------------------------------------------------
# odd batches and models
# --------------------------------------------------------------------------------------


def test_empty_batch(caught: Caught) -> None:
    torch.manual_seed(0)
    model = mlp(4, 2, hidden=8, depth=1)

    def batch(i: int) -> torch.Tensor:
        return torch.randn(0 if i == 1 else 8, 4)

    mon = train(model, n_steps=3, batch=batch, loss_fn=lambda out: out.pow(2).sum() / max(out.shape[0], 1))
    assert caught.internal == []
    h = mon.history
    assert stat(h, "loss", "", 1).value.tolist() == [0.0]
    assert sorted(stat(h, "loss", "").step) == [0, 1, 2]
    for layer in ("0", "1", "2"):
        empty_mean = stat(h, "act_mean", layer, 1).value.tolist()
        assert len(empty_mean) == 1
        assert math.isnan(empty_mean[0]), "the mean of no elements is undefined"
        assert stat(h, "nonfinite", layer, 1).value.tolist() == [0.0]
        assert all(math.isfinite(v) for v in stat(h, "act_mean", layer).query("step != 1").value)
    assert values(h, "grad_norm", "0.weight")[1] == 0.0
    assert values(h, "update_ratio", "0.weight")[1] == 0.0


class Attention(nn.Module):
    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)
        self.need_weights = need_weights
        self.outs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, need_weights=self.need_weights)
        if self.training:
            self.outs.append(out.detach().double())
        return self.head(out.mean(1))


@pytest.mark.parametrize("need_weights", [pytest.param(True, id="with-weights"), pytest.param(False, id="no-weights")])
def test_multihead_attention(need_weights: bool, caught: Caught) -> None:
    torch.manual_seed(0)
    model = Attention(need_weights)
    mon = train(model, n_steps=3, batch=lambda i: torch.randn(4, 5, 8))
    assert caught.internal == []
    h = mon.history
    assert sorted(stat(h, "act_mean", "attn").step) == [0, 1, 2]
    assert not any(layer.startswith("attn.out_proj") for layer in h[h.stat.isin(ACT_STATS)].layer)
    for name in ("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias"):
        assert all(v > 0 for v in values(h, "grad_norm", name)), name
    for name in ("attn.in_proj_weight", "attn.out_proj.weight"):  # (the biases start at 0: ratio undefined)
        assert all(v > 0 for v in values(h, "update_ratio", name)), name
    assert all(math.isfinite(v) for v in values(h, "act_std", "attn"))
    if not need_weights:  # the output alone: checkable exactly
        assert values(h, "act_mean", "attn") == pytest.approx([float(o.mean()) for o in model.outs], rel=1e-5)


def test_model_with_its_own_forward_hooks(caught: Caught) -> None:
    torch.manual_seed(0)
    model = mlp(4, 2, hidden=8, depth=1)
    model.register_forward_pre_hook(lambda mod, args: (args[0] * 2.0,))  # replaces the input
    model[0].register_forward_hook(lambda mod, args, out: out + 100.0)  # replaces the output
    seen_in: list[float] = []
    seen_out: list[float] = []
    inputs = [torch.randn(8, 4) for _ in range(3)]
    with Monitor(model, torch.optim.SGD(model.parameters(), lr=1e-6), log_dir=None, schedule=1) as mon:
        # registered after nndiag's hooks: sees what every earlier hook saw
        model.register_forward_pre_hook(lambda mod, args: seen_in.append(float(args[0].mean())))
        model[0].register_forward_hook(lambda mod, args, out: seen_out.append(float(out.detach().mean())))
        opt = mon.session.recorder.optimizers[0]
        for x in inputs:
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            mon.step()
    assert caught.internal == []
    h = mon.history
    assert seen_in == pytest.approx([float(x.mean()) * 2.0 for x in inputs], rel=1e-5)
    assert values(h, "act_mean", "input") == pytest.approx(seen_in, rel=1e-5)
    assert values(h, "act_mean", "0") == pytest.approx(seen_out, rel=1e-6)
    assert min(seen_out) > 50


@pytest.mark.parametrize(
    ("loss", "rel"),
    [
        pytest.param(lambda t: t, 1e-6, id="tensor"),
        pytest.param(lambda t: float(t), 1e-6, id="python-float"),
        pytest.param(lambda t: np.float32(float(t)), 1e-6, id="numpy-float"),
        pytest.param(lambda t: t.detach().expand(3).clone(), 1e-6, id="per-sample-vector"),
        pytest.param(lambda t: t.double(), 1e-6, id="float64-tensor"),
        pytest.param(lambda t: t.half(), 1e-3, id="float16-tensor"),
    ],
)
def test_loss_kinds(loss: Callable[[torch.Tensor], Any], rel: float, caught: Caught) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected = []
    with Monitor(model, opt, log_dir=None, schedule=2) as mon:
        for _ in range(4):
            value = model(torch.randn(8, 4)).pow(2).mean()
            value.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss(value))
            expected.append(float(value))
    assert caught.internal == []
    assert values(mon.history, "loss", "") == pytest.approx(expected, rel=rel)


# --------------------------------------------------------------------------------------
# errors inside nndiag
# --------------------------------------------------------------------------------------


class Injected(RuntimeError):
    pass


def failing(*args: Any, **kwargs: Any) -> Any:
    raise Injected("injected failure")


def assert_reported_once_each(caught: Caught) -> list[str]:
    """Every internal warning is a report of the injected failure, and each site is reported once."""
    sites = caught.sites()
    assert sites, "the injected failure was not reported"
    assert len(sites) == len(set(sites)), f"a site was reported more than once: {sites}"
    assert len(caught.internal) == len(sites), caught.internal
    for msg in caught.internal:
        assert "injected failure" in msg, msg
        assert "Traceback" in msg, "the report must carry the traceback"
    return sites


def run_mlp(n_steps: int, log_dir: Any = None, **options: Any) -> tuple[Monitor, list[float]]:
    torch.manual_seed(0)
    model = mlp(4, 2, hidden=8, depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    with Monitor(model, opt, log_dir=log_dir, schedule=options.pop("schedule", 1), **options) as mon:
        for i in range(n_steps):
            loss = model(torch.randn(8, 4, generator=torch.Generator().manual_seed(i))).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
            losses.append(float(loss))
    assert mon.steps == n_steps
    return mon, losses


def _has_acts(h: Any) -> bool:
    return not h[h.stat.isin(ACT_STATS)].empty


INJECTIONS = [
    pytest.param(
        "nndiag.collect.activations.sufficient_stats",
        lambda h: not _has_acts(h) and not stat(h, "grad_norm", "0.weight").empty,
        id="activation-statistics",
    ),
    pytest.param(
        "nndiag.collect.activations.unit_max",
        lambda h: len(stat(h, "act_mean", "input")) == 5 and len(stat(h, "grad_norm", "0.weight")) == 5,
        id="dead-unit-statistics",
    ),
    pytest.param("nndiag.collect.params.ParamCollector.pack", lambda h: True, id="param-pack"),
    pytest.param(
        "nndiag.collect.params.ParamCollector.snapshot",
        lambda h: stat(h, "update_ratio").empty and len(stat(h, "weight_norm", "0.weight")) == 5 and _has_acts(h),
        id="weight-snapshot",
    ),
    pytest.param(
        "nndiag.collect.recorder.Recorder.facts",
        lambda h: _has_acts(h) and len(stat(h, "grad_norm", "0.weight")) == 5,
        id="model-facts",
    ),
    pytest.param(
        "nndiag.store.writer.RunStore.write_rows",
        lambda h: _has_acts(h) and len(stat(h, "grad_norm", "0.weight")) == 5,
        id="store-write",
    ),
    pytest.param(
        "nndiag.sinks.tensorboard.TensorBoardSink.write_rows",
        lambda h: _has_acts(h) and len(stat(h, "grad_norm", "0.weight")) == 5,
        id="tensorboard-write",
    ),
]


@pytest.mark.parametrize(("target", "still_works"), INJECTIONS)
def test_internal_error_is_contained(
    target: str, still_works: Callable[[Any], bool], monkeypatch: pytest.MonkeyPatch, caught: Caught, tmp_path: Any
) -> None:
    monkeypatch.setattr(target, failing)
    mon, losses = run_mlp(5, log_dir=tmp_path)
    assert_reported_once_each(caught)
    h = mon.history
    assert values(h, "loss", "") == pytest.approx(losses, rel=1e-6), "losses are recorded whatever else fails"
    assert still_works(h)
    if "RunStore" not in target:
        assert values(load_run(mon.log_dir).history, "loss", "") == pytest.approx(losses, rel=1e-6)


def test_schedule_that_raises_is_contained(caught: Caught) -> None:
    mon, losses = run_mlp(5, schedule=lambda step: 1 / 0)
    assert_sites = caught.sites()
    assert assert_sites == ["schedule"]
    assert len(caught.internal) == 1
    h = mon.history
    assert values(h, "loss", "") == pytest.approx(losses, rel=1e-6)
    assert not _has_acts(h)


def test_transient_failure_does_not_leak_into_next_step(monkeypatch: pytest.MonkeyPatch, caught: Caught) -> None:
    """A logging step whose packing fails must not merge its statistics into the next step."""
    original = nndiag.collect.params.ParamCollector.pack
    calls = {"n": 0}

    def pack_fails_once(self: ParamCollector, weights: bool = True) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # step 2
            raise Injected("injected failure")
        return original(self, weights)

    monkeypatch.setattr(ParamCollector, "pack", pack_fails_once)
    torch.manual_seed(0)
    model = mlp(4, 2, hidden=8, depth=1)
    out_means: list[float] = []
    model[2].register_forward_hook(lambda mod, args, out: out_means.append(float(out.detach().double().mean())))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    grad_norms = []
    losses = []
    with Monitor(model, opt, log_dir=None, schedule=1) as mon:
        for i in range(5):
            loss = model(torch.randn(8, 4, generator=torch.Generator().manual_seed(i))).pow(2).mean()
            loss.backward()
            grad_norms.append(float(model[0].weight.grad.norm()))
            opt.step()
            opt.zero_grad()
            mon.step(loss)
            losses.append(float(loss))
    assert_reported_once_each(caught)
    h = mon.history
    assert values(h, "loss", "") == pytest.approx(losses, rel=1e-6)
    # the parameter statistics are their own site: step 2 keeps its activations, loses only its gradient rows
    assert sorted(stat(h, "act_mean", "2").step) == [0, 1, 2, 3, 4]
    assert sorted(stat(h, "grad_norm", "0.weight").step) == [0, 1, 3, 4]
    assert [stat(h, "act_mean", "2", k).value.item() for k in range(5)] == pytest.approx(out_means, rel=1e-5)
    assert [stat(h, "grad_norm", "0.weight", k).value.item() for k in (0, 1, 3, 4)] == pytest.approx(
        [grad_norms[k] for k in (0, 1, 3, 4)], rel=1e-5
    )


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("nndiag.collect.activations.sufficient_stats", id="activation-statistics"),
        pytest.param("nndiag.collect.params.ParamCollector.pack", id="param-pack"),
    ],
)
def test_persistent_failure_is_switched_off(target: str, monkeypatch: pytest.MonkeyPatch, caught: Caught) -> None:
    """A site failing at every step: one report, one switch-off notice, and losses keep coming."""
    calls = {"n": 0}

    def count_and_fail(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        raise Injected("injected failure")

    monkeypatch.setattr(target, count_and_fail)
    mon, losses = run_mlp(30)
    reports = caught.sites()
    switched_off = [m for m in caught.internal if "switched off" in m]
    assert len(reports) == len(set(reports)) >= 1
    assert len(switched_off) == len(reports), caught.internal
    assert len(caught.internal) == 2 * len(reports)
    assert calls["n"] <= 20 * len(reports), "a switched-off site must not run again"
    assert values(mon.history, "loss", "") == pytest.approx(losses, rel=1e-6), "losses at all 30 steps"


# --------------------------------------------------------------------------------------
# invalid configuration
# --------------------------------------------------------------------------------------


def _model_opt() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Linear(2, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


BAD_CONFIGS = [
    pytest.param(lambda: DiagnosticsCallback(schedule=0), ValueError, r"schedule=1", id="callback-schedule-0"),
    pytest.param(
        lambda: DiagnosticsCallback(schedule=-5), ValueError, r"positive int", id="callback-schedule-negative"
    ),
    pytest.param(lambda: DiagnosticsCallback(schedule="x"), ValueError, r"callable", id="callback-schedule-str"),
    pytest.param(lambda: DiagnosticsCallback(schedule=2.5), ValueError, r"positive int", id="callback-schedule-float"),
    pytest.param(lambda: DiagnosticsCallback(schedule=True), ValueError, r"positive int", id="callback-schedule-bool"),
    pytest.param(
        lambda: DiagnosticsCallback(histogram=True), TypeError, r"valid options:.*histograms", id="unknown-option"
    ),
    pytest.param(
        lambda: DiagnosticsCallback(update_ratio="fast"), ValueError, r"'exact'.*'sampled'", id="update-ratio"
    ),
    pytest.param(lambda: DiagnosticsCallback(config="x"), TypeError, r"RecorderConfig", id="config-not-a-config"),
    pytest.param(lambda: DiagnosticsCallback(max_queue=0), ValueError, r"positive int", id="max-queue-0"),
    pytest.param(lambda: DiagnosticsCallback(flush_seconds=-1), ValueError, r"positive number", id="flush-seconds"),
    pytest.param(
        lambda: Monitor(_model_opt()[0], "not an optimizer"), TypeError, r"pass the optimizer", id="monitor-opt"
    ),
    pytest.param(lambda: Monitor("model", _model_opt()[1]), TypeError, r"nn\.Module", id="monitor-model"),
    pytest.param(lambda: Monitor(*_model_opt(), schedule=0), ValueError, r"schedule=1", id="monitor-schedule"),
    pytest.param(lambda: Monitor(*_model_opt(), bogus=1), TypeError, r"unknown nndiag option", id="monitor-option"),
    pytest.param(lambda: RecorderConfig(histogram_bins=0), ValueError, r"positive int", id="config-bins"),
]


@pytest.mark.parametrize(("make", "error", "message"), BAD_CONFIGS)
def test_invalid_configuration_fails_at_construction(make: Callable[[], Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_invalid_monitor_leaves_no_hooks(tmp_path: Any) -> None:
    model, opt = _model_opt()
    with pytest.raises(TypeError):
        Monitor(model, opt, log_dir=tmp_path, histogram=True)
    assert not model._forward_hooks
    assert not model._forward_pre_hooks
    assert not opt._optimizer_step_pre_hooks
    assert list(tmp_path.iterdir()) == [], "nothing is written for a rejected configuration"


def test_unreadable_callback_state_warns_once(caught: Caught) -> None:
    cb = DiagnosticsCallback()
    cb.load_state_dict({"step": 7})
    cb.load_state_dict({"step": "garbage"})
    assert len(caught.internal) == 1
    assert "ignoring" in caught.internal[0]
    assert cb.state_dict()["step"] == 7


# --------------------------------------------------------------------------------------
# disks that do not cooperate
# --------------------------------------------------------------------------------------


def _check_log_dir_warnings(caught: Caught, bad: Any) -> None:
    assert caught.internal, "an unwritable log directory must be reported"
    assert caught.sites() == [], "not an internal error: no traceback report"
    assert len(caught.internal) == 1, caught.internal  # one cause, one warning
    assert "run store" in caught.internal[0]
    assert "memory only" in caught.internal[0]
    assert all(str(bad) in m for m in caught.internal), caught.internal


def test_unwritable_log_dir_monitor(tmp_path: Any, caught: Caught) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    mon, losses = run_mlp(4, log_dir=blocker / "runs")
    _check_log_dir_warnings(caught, blocker)
    assert mon.log_dir is None  # nothing was written anywhere
    h = mon.history
    assert values(h, "loss", "") == pytest.approx(losses, rel=1e-6)
    assert _has_acts(h)
    assert blocker.read_text() == "not a directory"


def test_unwritable_log_dir_lightning(pkg: str, tmp_path: Any, caught: Caught) -> None:
    from helpers import lightning

    L = lightning(pkg)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    x, y = blobs(n=32, features=8, classes=3)
    cb = DiagnosticsCallback(schedule=1)
    trainer = L.Trainer(
        callbacks=[cb],
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(blocker / "runs"),
    )
    trainer.fit(make_module(pkg, mlp(8, 3, 16, 1)), loader(x, y, 8))
    _check_log_dir_warnings(caught, blocker)
    assert cb.log_dir is None
    assert sorted(stat(cb.history, "loss", "").step) == [0, 1, 2, 3]
    assert trainer.global_step == cb.session.step == 4


def _disk_full(*args: Any, **kwargs: Any) -> None:
    raise sqlite3.OperationalError("database or disk is full")


def _check_disk_full_warnings(caught: Caught) -> None:
    """One report with the cause; at most the guard's switch-off notice besides (on a slow machine)."""
    assert caught.sites() == ["run store"]
    assert "disk is full" in caught.internal[0]
    others = caught.internal[1:]
    assert len(others) <= 1, caught.internal
    assert all("'run store'" in m and "switched off" in m for m in others), caught.internal


def test_disk_full_monitor(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caught: Caught) -> None:
    reference, _ = run_mlp(6)  # the same run, in memory only
    monkeypatch.setattr(RunStore, "flush", _disk_full)
    mon, losses = run_mlp(6, log_dir=tmp_path)
    _check_disk_full_warnings(caught)
    h = mon.history
    assert values(h, "loss", "") == pytest.approx(losses, rel=1e-6)
    ref = reference.history
    assert len(h) == len(ref)
    assert h.sort_values(["step", "layer", "stat"]).value.to_numpy() == pytest.approx(
        ref.sort_values(["step", "layer", "stat"]).value.to_numpy(), rel=1e-6, nan_ok=True
    )


def test_disk_full_lightning(pkg: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caught: Caught) -> None:
    monkeypatch.setattr(RunStore, "flush", _disk_full)
    x, y = blobs(n=48, features=8, classes=3)
    cb = DiagnosticsCallback(schedule=1)
    trainer = fit(pkg, make_module(pkg, mlp(8, 3, 16, 1)), loader(x, y, 8), [cb], tmp_path)
    _check_disk_full_warnings(caught)
    assert trainer.global_step == cb.session.step == 6
    h = cb.history
    assert sorted(stat(h, "loss", "").step) == list(range(6))
    assert sorted(stat(h, "grad_norm", "net.0.weight").step) == list(range(6))


# --------------------------------------------------------------------------------------
# update ratio modes
# --------------------------------------------------------------------------------------


def test_sampled_update_ratio_matches_exact_when_every_element_is_sampled(caught: Caught) -> None:
    exact, _ = run_mlp(4, update_ratio="exact")
    sampled, _ = run_mlp(4, update_ratio="sampled", update_ratio_samples=64)  # >= every tensor's size (32)
    assert caught.internal == []
    e, s = stat(exact.history, "update_ratio"), stat(sampled.history, "update_ratio")
    assert len(e) == len(s) == 4 * 4
    key = ["step", "layer"]
    assert s.sort_values(key).value.to_numpy() == pytest.approx(e.sort_values(key).value.to_numpy(), rel=1e-5)


def test_sampled_update_ratio_estimates_large_tensors(caught: Caught) -> None:
    exact, _ = run_mlp(4, update_ratio="exact")
    sampled, _ = run_mlp(4, update_ratio="sampled", update_ratio_samples=16)  # 0.weight has 32 elements
    assert caught.internal == []
    e = stat(exact.history, "update_ratio", "0.weight").sort_values("step").value.to_numpy()
    s = stat(sampled.history, "update_ratio", "0.weight").sort_values("step").value.to_numpy()
    assert len(s) == 4
    assert np.isfinite(s).all()
    assert (s > 0).all()
    assert s == pytest.approx(e, rel=0.75), "a 50% sample estimates the ratio to within its sampling error"
    small = stat(sampled.history, "update_ratio", "2.bias").sort_values("step").value.to_numpy()
    assert small == pytest.approx(stat(exact.history, "update_ratio", "2.bias").sort_values("step").value, rel=1e-5)


# --------------------------------------------------------------------------------------
# property: any floating output of any shape, with NaN/Inf, never breaks training
# --------------------------------------------------------------------------------------

PROBE_BASES: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "other": (nn.Identity, ()),
    "tanh": (nn.Tanh, ()),  # saturation counted
    "relu": (nn.ReLU, ()),  # dead units counted
    "conv": (nn.Conv1d, (1, 1, 1)),  # channels-first layout (its own parameters get no gradient)
}


def _make_output(dtype: torch.dtype, shape: tuple[int, ...], special: float | None, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0
    if special is not None and x.numel() > 0:
        x.view(-1)[seed % x.numel()] = special
    return x.to(dtype)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
    special=st.sampled_from([None, math.nan, math.inf, -math.inf, 0.0, 1.0, -1.0]),
    base=st.sampled_from(sorted(PROBE_BASES)),
    container=st.sampled_from(["bare", "tuple", "dict"]),
    histograms=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_any_float_output_never_breaks_training(
    dtype: torch.dtype,
    shape: tuple[int, ...],
    special: float | None,
    base: str,
    container: str,
    histograms: bool,
    seed: int,
) -> None:
    out = _make_output(dtype, shape, special, seed)

    cls, args = PROBE_BASES[base]

    class Weird(cls):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(*args)

        def forward(self, h: torch.Tensor) -> Any:
            if container == "tuple":
                return (out, h.argmax(-1))
            if container == "dict":
                return {"out": out}
            return out

    probe = Weird()
    torch.manual_seed(seed)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        mon = train(ProbeNet(probe), n_steps=2, histograms=histograms)
    internal = [str(w.message) for w in records if issubclass(w.category, NndiagInternalWarning)]
    assert internal == []
    h = mon.history
    assert sorted(stat(h, "loss", "").step) == [0, 1]
    ref = out.double().reshape(-1)
    bad = int((~torch.isfinite(ref)).sum())
    assert values(h, "nonfinite", "probe") == [bad, bad]
    means = values(h, "act_mean", "probe")
    assert len(means) == 2
    if ref.numel() > 0 and bad == 0:
        assert means == pytest.approx([float(ref.mean())] * 2, rel=1e-3, abs=1e-3)
        assert values(h, "act_std", "probe") == pytest.approx([float(ref.std(unbiased=False))] * 2, rel=1e-3, abs=1e-3)
    else:
        assert all(math.isnan(m) or not math.isfinite(m) for m in means)
    for name in ("dead_frac", "sat_frac"):
        assert all(0.0 <= v <= 1.0 for v in values(h, name, "probe"))
