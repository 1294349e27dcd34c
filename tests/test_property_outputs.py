"""Properties of nndiag over arbitrary module outputs, user hooks and internal failures.

* Any module output (tensors of any dtype and shape, NaN/Inf, nested in tuples, lists, dicts, dataclasses) used by
  the loss, with user forward / pre / backward hooks around: training completes, the user's outputs and gradients are
  bit-identical to a run without nndiag, no warning is raised, and every recorded value is finite except the
  statistics of data that is non-finite (or empty), which are NaN/Inf.
* Any one failing function inside nndiag: exactly one NndiagInternalWarning, naming its site, and every statistic
  that site does not produce is recorded as without the failure.

tests/test_edge_cases.py covers unused (observed-only) float outputs and a fixed list of injected failures.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nndiag import Monitor
from nndiag.guard import NndiagInternalWarning

ACT_STATS = {"act_mean", "act_std", "nonfinite", "dead_frac", "sat_frac"}
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BATCH = 4
STEPS = 2
OUTPUT_STEPS = 3  # (step 1 is skipped where an output case parks nndiag's hooks)


def internal_warnings(records: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in records if issubclass(w.category, NndiagInternalWarning)]


# --------------------------------------------------------------------------------------
# module outputs
# --------------------------------------------------------------------------------------

SHAPES: dict[str, tuple[int, ...]] = {
    "0-d": (),
    "1-d": (BATCH,),
    "2-d": (BATCH, 6),
    "empty-batch": (0, 6),
    "1x100000": (1, 100_000),
    "5-d": (BATCH, 2, 3, 2, 2),
}
DTYPES = [*FLOATS, torch.int64, torch.bool, torch.complex64]


@dataclasses.dataclass(frozen=True)
class Part:
    """One tensor of an output: dtype, shape, and a NaN/Inf placed in it (or not)."""

    dtype: torch.dtype
    shape: str
    special: float | None


@dataclasses.dataclass
class Bundle:
    """A dataclass output (as Hugging Face's ModelOutput-style results)."""

    first: Any
    rest: Any
    label: str = "bundle"


def make_part(h: torch.Tensor, part: Part, seed: int) -> torch.Tensor:
    """A tensor of ``part``'s kind that depends on ``h`` (so gradients flow through it when it is floating)."""
    shape = SHAPES[part.shape]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0 + h.mean().double()
    if part.special is not None and x.numel() > 0:
        mask = torch.zeros(shape, dtype=torch.bool)
        mask.view(-1)[seed % x.numel()] = True
        x = torch.where(mask, torch.tensor(part.special, dtype=torch.float64), x)
    if part.dtype == torch.bool:
        return x > 0
    if part.dtype == torch.int64:
        return torch.where(torch.isfinite(x), x, 0.0).long()
    if part.dtype == torch.complex64:
        return torch.complex(x.float(), -x.float())
    return x.to(part.dtype)


def pack_output(parts: list[torch.Tensor], container: str) -> Any:
    if container == "bare":
        return parts[0]
    if container == "tuple":
        return tuple(parts)
    if container == "dict":
        return {"meta": None, "name": "out", **{f"p{i}": p for i, p in enumerate(parts)}}
    if container == "dataclass":
        return Bundle(parts[0], tuple(parts[1:]))
    return [parts[0], [*parts[1:2], {"deep": parts[2:]}]]  # nested: list, list, dict, list (depth 4)


def leaves(obj: Any) -> list[torch.Tensor]:
    """Every tensor of an output, in order (the test's own traversal, independent of nndiag's)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in leaves(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in leaves(v)]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in leaves(getattr(obj, f.name))]
    return []


BASES: dict[str, tuple[type[nn.Module], tuple[Any, ...]]] = {
    "plain": (nn.Module, ()),
    "tanh": (nn.Tanh, ()),  # saturation counted
    "relu": (nn.ReLU, ()),  # dead units counted
    "conv": (nn.Conv3d, (1, 1, 1)),  # channels-first layout (its weight gets no gradient)
}


def make_leaf(base: str, parts: list[Part], container: str, seed: int) -> nn.Module:
    cls, args = BASES[base]

    class Leaf(cls):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(*args)

        def forward(self, h: torch.Tensor) -> Any:
            return pack_output([make_part(h, p, seed + i) for i, p in enumerate(parts)], container)

    return Leaf()


class OutputNet(nn.Module):
    def __init__(self, leaf: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.Tanh()
        self.leaf = leaf
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
        h = self.act(self.fc(x))
        return self.leaf(h), self.head(h)


@dataclasses.dataclass
class Hooks:
    """The user's own hooks: which are registered, and whether before nndiag attaches its own."""

    forward_pre: bool
    forward: bool
    backward: bool
    backward_pre: bool
    root_pre: bool
    first: bool
    parked: bool = False  # nndiag skips step 1, so its hooks are parked there and put back for step 2


def logged_steps(hooks: Hooks) -> list[int]:
    return [k for k in range(OUTPUT_STEPS) if not (hooks.parked and k == 1)]


def register(model: OutputNet, hooks: Hooks, seen_fc: list[float]) -> None:
    if hooks.forward_pre:
        model.fc.register_forward_pre_hook(lambda m, args: (args[0] * 1.5,))
    if hooks.forward:

        def replace_output(m: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
            if m.training:
                seen_fc.append(float(out.detach().double().mean()))
            return out + 0.25

        model.fc.register_forward_hook(replace_output)
    if hooks.backward:
        model.fc.register_full_backward_hook(lambda m, gin, gout: tuple(None if g is None else g * 0.5 for g in gin))
    if hooks.backward_pre:
        model.head.register_full_backward_pre_hook(lambda m, gout: tuple(g * 2.0 for g in gout))
    if hooks.root_pre:
        model.register_forward_pre_hook(lambda m, args, kwargs: ((args[0] + 0.1,), kwargs), with_kwargs=True)


@dataclasses.dataclass
class OutputRun:
    outputs: list[list[torch.Tensor]]  # per step: every tensor of the leaf's output
    grads: list[list[torch.Tensor]]  # per step: every parameter's gradient
    inputs: list[torch.Tensor]
    seen_fc: list[float]
    history: pd.DataFrame | None
    internal: list[str]


def train_outputs(
    base: str, parts: list[Part], container: str, hooks: Hooks, seed: int, with_nndiag: bool, histograms: bool
) -> OutputRun:
    torch.manual_seed(seed)
    model = OutputNet(make_leaf(base, parts, container, seed))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(seed)
    run = OutputRun([], [], [], [], None, [])
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        if hooks.first:
            register(model, hooks, run.seen_fc)
        schedule = (lambda k: k != 1) if hooks.parked else 1
        mon = Monitor(model, opt, log_dir=None, schedule=schedule, histograms=histograms) if with_nndiag else None
        if not hooks.first:
            register(model, hooks, run.seen_fc)
        for _ in range(OUTPUT_STEPS):
            x = torch.randn(BATCH, 4, generator=gen)
            out, logits = model(x)
            floating = [t for t in leaves(out) if t.dtype in FLOATS]
            loss = logits.pow(2).mean()
            for t in floating:  # the output's finite values feed the loss
                loss = loss + torch.where(torch.isfinite(t), t, 0.0).float().pow(2).sum() / max(t.numel(), 1)
            loss.backward()
            run.outputs.append([t.detach().clone() for t in leaves(out)])
            run.grads.append([torch.zeros(0) if p.grad is None else p.grad.clone() for p in model.parameters()])
            run.inputs.append(x)
            opt.step()
            opt.zero_grad()
            if mon is not None:
                mon.step(loss)
        if mon is not None:
            mon.close()
            run.history = mon.history
    run.internal = internal_warnings(records)
    return run


def assert_bit_identical(got: list[list[torch.Tensor]], ref: list[list[torch.Tensor]], what: str) -> None:
    assert len(got) == len(ref)
    for k, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert len(a) == len(b), (what, k)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert x.dtype == y.dtype and x.shape == y.shape, (what, k, i)
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=f"{what}: step {k}, tensor {i}")


def series(h: pd.DataFrame, stat: str, layer: str) -> list[float]:
    rows = h[(h.stat == stat) & (h.layer == layer)].sort_values("step")
    return rows.value.tolist()


parts_strategy = st.lists(
    st.builds(
        Part,
        dtype=st.sampled_from(DTYPES),
        shape=st.sampled_from(sorted(SHAPES)),
        special=st.sampled_from([None, None, math.nan, math.inf, -math.inf]),
    ),
    min_size=3,
    max_size=3,
)
hooks_strategy = st.builds(
    Hooks,
    forward_pre=st.booleans(),
    forward=st.booleans(),
    backward=st.booleans(),
    backward_pre=st.booleans(),
    root_pre=st.booleans(),
    first=st.booleans(),
    parked=st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(
    base=st.sampled_from(sorted(BASES)),
    parts=parts_strategy,
    container=st.sampled_from(["bare", "tuple", "dict", "dataclass", "nested"]),
    hooks=hooks_strategy,
    histograms=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_any_output_with_user_hooks(
    base: str, parts: list[Part], container: str, hooks: Hooks, histograms: bool, seed: int
) -> None:
    ref = train_outputs(base, parts, container, hooks, seed, with_nndiag=False, histograms=histograms)
    got = train_outputs(base, parts, container, hooks, seed, with_nndiag=True, histograms=histograms)
    assert got.internal == []
    assert_bit_identical(got.outputs, ref.outputs, "module outputs")
    assert_bit_identical(got.grads, ref.grads, "gradients")
    h = got.history
    assert h is not None
    assert sorted(h[(h.stat == "loss") & (h.layer == "")].step) == list(range(OUTPUT_STEPS))

    # the leaf: statistics of its floating parts, concatenated (what nndiag documents it measures)
    used = [p for p in (parts[:1] if container == "bare" else parts)]
    logged = logged_steps(hooks)
    outputs = [got.outputs[k] for k in logged]
    floating = [[t for t, p in zip(out, used, strict=True) if p.dtype in FLOATS] for out in outputs]
    leaf = h[h.layer == "leaf"]
    if not floating[0]:
        assert leaf.empty, "an output without floating tensors has no statistics"
    else:
        flat = [torch.cat([t.double().reshape(-1) for t in f]) for f in floating]
        bad = [int((~torch.isfinite(f)).sum()) for f in flat]
        assert series(h, "nonfinite", "leaf") == bad
        for k, f, nonfinite in zip(logged, flat, bad, strict=True):
            mean = leaf[(leaf.stat == "act_mean") & (leaf.step == k)].value.item()
            std = leaf[(leaf.stat == "act_std") & (leaf.step == k)].value.item()
            if f.numel() == 0:
                assert math.isnan(mean) and math.isnan(std), "statistics of no elements are undefined"
            elif nonfinite:
                assert not math.isfinite(mean) and not math.isfinite(std), "non-finite data, non-finite mean"
            else:
                assert mean == pytest.approx(float(f.mean()), rel=1e-3, abs=1e-3)
                assert std == pytest.approx(float(f.std(unbiased=False)), rel=1e-3, abs=1e-3)
        fractions = leaf[leaf.stat.isin({"dead_frac", "sat_frac"})].value
        assert fractions.between(0.0, 1.0).all()

    # every other recorded value is finite
    others = h[h.layer != "leaf"]
    assert others.value.map(math.isfinite).all(), others[~others.value.map(math.isfinite)]
    for layer in ("fc", "act", "head", "input"):
        assert sorted(h[(h.stat == "act_mean") & (h.layer == layer)].step) == logged, layer

    # the user's hooks: nndiag sees what the hooks registered before it produced (also once put back after parking)
    fc_means = series(h, "act_mean", "fc")
    if hooks.forward:
        expected = [got.seen_fc[k] + 0.25 if hooks.first else got.seen_fc[k] for k in logged]
        assert fc_means == pytest.approx(expected, rel=1e-5, abs=1e-6)
    shift = 0.1 if hooks.root_pre and hooks.first else 0.0
    assert series(h, "act_mean", "input") == pytest.approx(
        [float(got.inputs[k].double().mean()) + shift for k in logged], rel=1e-5, abs=1e-6
    )


# --------------------------------------------------------------------------------------
# internal failures
# --------------------------------------------------------------------------------------


class SharedNet(nn.Module):
    """fc1 -> tanh -> fc2 -> tanh (the same module again) -> relu -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.tanh = nn.Tanh()
        self.fc2 = nn.Linear(8, 8)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.tanh(self.fc2(self.tanh(self.fc1(x))))))


RowFilter = Callable[[str, str], bool]  # (layer, stat) -> whether the failure may touch that row


def nothing(layer: str, stat: str) -> bool:
    return False


def module_activations(layer: str, stat: str) -> bool:
    return layer != "input" and stat in ACT_STATS


@dataclasses.dataclass(frozen=True)
class Injection:
    """A function inside nndiag made to fail, the site that must report it, and the rows it may cost.

    ``missing``: rows that may be absent (the site's own statistics); ``changed``: rows that may be recorded with
    another value (partial: e.g. the first of two calls of a shared module). Every other row is as without failure.
    """

    target: str
    site: str
    min_calls: int  # calls in STEPS logging steps (a once-only failure picks one of them)
    missing: RowFilter = nothing
    changed: RowFilter = nothing
    histograms: bool = False
    optimizer: str = "sgd"  # "sgd" (with momentum: its update is read from the optimizer) or "adam" (weight copy)


# Functions shared by two sites (sufficient_stats, float_tensors: input and activation statistics) are covered by
# tests/test_edge_cases.py; here each target belongs to exactly one site.
def tanh_activations(layer: str, stat: str) -> bool:
    return layer == "tanh" and stat in ACT_STATS


# A failing call of the shared tanh keeps the statistics of its other call: activation rows may change, not only go.
INJECTIONS = [
    Injection("nndiag.collect.activations.unit_max", "activation statistics", 4, *[module_activations] * 2),
    Injection("nndiag.collect.activations.saturated_count", "activation statistics", 4, *[tanh_activations] * 2),
    Injection(
        "nndiag.collect.activations.histogram", "activation statistics", 4, *[module_activations] * 2, histograms=True
    ),
    Injection(
        "nndiag.collect.activations._merge",
        "activation statistics",
        STEPS,
        changed=tanh_activations,  # the first call's statistics stay
    ),
    # the forward facts give the batch size that the run-wide batch_size statistic reports
    Injection(
        "nndiag.collect.activations._batch_size",
        "forward facts",
        1,
        missing=lambda layer, stat: stat == "batch_size",
    ),
    Injection("nndiag.collect.recorder.module_facts", "model facts", 1),
    Injection("nndiag.collect.recorder.initial_weight_facts", "initial weight statistics", 1),
    Injection(
        "nndiag.collect.params.ParamCollector.snapshot",
        "weight snapshot",
        STEPS,
        missing=lambda layer, stat: stat == "update_ratio",
        changed=lambda layer, stat: stat == "weight_norm",  # measured after the step instead of before
    ),
    # a failed gradient norm is left out (never recorded as 0.0, "no gradient reached this parameter")
    Injection(
        "nndiag.collect.params.norms",
        "gradient statistics",
        STEPS,
        missing=lambda layer, stat: stat.startswith("grad_norm"),
    ),
    # the parameter statistics are one site: they go together, the activations and the loss stay
    Injection(  # SGD with momentum: the update read from the optimizer
        "nndiag.collect.params._sgd_distances",
        "parameter statistics",
        STEPS,
        missing=lambda layer, stat: stat in ("grad_norm", "grad_norm_total", "weight_norm", "update_ratio"),
    ),
    Injection(  # Adam: the update measured against the weight copy
        "nndiag.collect.params._distances",
        "parameter statistics",
        STEPS,
        missing=lambda layer, stat: stat in ("grad_norm", "grad_norm_total", "weight_norm", "update_ratio"),
        optimizer="adam",
    ),
    # finalising one layer's numbers (host side) costs that layer only, not the packet and its losses
    Injection(
        "nndiag.collect.packet.finalize_layer",
        "statistics finalisation",
        1,
        missing=lambda layer, stat: stat in ACT_STATS or stat in ("weight_norm", "update_ratio"),
    ),
]


def resolve(target: str) -> tuple[Any, str]:
    """The object holding ``target``'s last attribute (a module, or a class inside one)."""
    path, attr = target.rsplit(".", 1)
    try:
        return importlib.import_module(path), attr
    except ImportError:
        module, cls = path.rsplit(".", 1)
        return getattr(importlib.import_module(module), cls), attr


def run_shared(histograms: bool, optimizer: str = "sgd") -> tuple[pd.DataFrame, list[str]]:
    torch.manual_seed(0)
    model = SharedNet()
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=1e-3)
    )
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        with Monitor(model, opt, log_dir=None, schedule=1, histograms=histograms) as mon:
            for _ in range(STEPS):
                loss = model(torch.randn(8, 4, generator=gen)).pow(2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
                mon.step(loss)
    return mon.history, internal_warnings(records)


def check_injection(injection: Injection, fail_at: int | None) -> None:
    """Fail ``injection.target`` at every call (``fail_at`` None) or at call ``fail_at`` only; check the outcome."""
    clean, clean_internal = run_shared(injection.histograms, injection.optimizer)
    assert clean_internal == []
    owner, attr = resolve(injection.target)
    original = getattr(owner, attr)
    calls = {"n": 0}

    def sometimes_failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if fail_at is None or calls["n"] - 1 == fail_at:
            raise RuntimeError("injected failure")
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(owner, attr, sometimes_failing)
        got, internal = run_shared(injection.histograms, injection.optimizer)
    assert calls["n"] >= injection.min_calls, f"{injection.target} was called {calls['n']} times"
    assert len(internal) == 1, internal
    assert re.match(rf"nndiag: internal error in '{re.escape(injection.site)}'", internal[0]), internal[0]
    assert "injected failure" in internal[0] and "Traceback" in internal[0]

    key = ["step", "layer", "stat"]
    merged = clean.merge(got, on=key, how="left", suffixes=("_clean", "_got"))
    for row in merged.itertuples():
        if math.isnan(row.value_got):  # absent with the failure (no row recorded NaN in the clean run)
            assert injection.missing(row.layer, row.stat), f"lost {row.layer}/{row.stat} at step {row.step}"
        elif not injection.changed(row.layer, row.stat):
            assert row.value_got == pytest.approx(row.value_clean, rel=1e-6, abs=1e-9), row
    extra = got.merge(clean, on=key, how="left", indicator=True)
    assert (extra._merge == "both").all(), "the failure added rows"
    assert clean.value.map(math.isfinite).all()


@settings(max_examples=40, deadline=None)
@given(
    injection=st.sampled_from(INJECTIONS),
    always=st.booleans(),
    which=st.integers(0, 100),
)
def test_internal_failure_is_reported_once_and_costs_only_its_site(
    injection: Injection, always: bool, which: int
) -> None:
    check_injection(injection, None if always else which % injection.min_calls)


@pytest.mark.parametrize("injection", [i for i in INJECTIONS if "_distances" in i.target], ids=lambda i: i.optimizer)
def test_each_update_path_fails_alone(injection: Injection) -> None:
    """Both update paths (the optimizer's own update, the weight copy) are exercised and fail only their site."""
    check_injection(injection, None)
