"""nndiag with ``torch.compile``: the same statistics as without compiling, no graph break, no recompilation storm.

Graphs are counted with :class:`GraphCounter`, a ``torch.compile`` backend that runs dynamo's graphs eagerly (or
through ``aot_eager``) and counts every graph it is handed (a compile) and every call of a compiled graph.

The bound, and why: nndiag's per-module hooks are traced into the model's graph and dynamo guards on their state.
Non-logging steps and evaluation passes read only the hooks' ``armed`` / ``training`` flags and reuse the graph compiled
without nndiag; logging steps need one more variant, and the first logging step one of its own (it also records the
forward facts: order, shapes, batch size). So with nndiag each compiled frame that runs the hooks in training mode is
compiled at most twice more than without, every compile happens by the first non-logging step, and each step calls
exactly as many compiled graphs as without nndiag (no graph break). The root's input hook, which dynamo meets as a
frame of its own in a compiled user-defined module, runs eagerly (``activations._root_hook_eager_as_frame``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytest
import torch
import torch._dynamo
from helpers import fit, lightning, loader
from torch import nn
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

import nndiag.collect.activations
from nndiag import DiagnosticsCallback, Monitor
from nndiag.collect.activations import ActivationCollector
from nndiag.guard import ErrorGuard, NndiagInternalWarning
from nndiag.schedule import default_schedule

STEPS = 60  # default schedule: steps 0-20, 30, 40, 50 log; after step 21 the loop switches 6 times more
FIRST_QUIET_STEP = 21  # the first non-logging step of the default schedule
EXTRA_VARIANTS = 2  # per compiled frame: the first logging step, and the later logging steps
KEY = ["step", "layer", "stat"]


class GraphCounter:
    """A ``torch.compile`` backend counting compiled graphs and their calls (graphs run eagerly or via ``inner``)."""

    def __init__(self, inner: str | None = None) -> None:
        self.inner = inner
        self.compiles = 0
        self.calls = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.compiles += 1
        compiled = gm.forward if self.inner is None else lookup_backend(self.inner)(gm, example_inputs)

        def run(*args: Any) -> Any:
            self.calls += 1
            return compiled(*args)

        return run


class Net(nn.Module):
    """A user-defined model: dynamo compiles its forward as a frame of its own (unlike torch.nn containers)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(16, 16)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def sequential() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


MODELS: dict[str, Callable[[], nn.Module]] = {"net": Net, "sequential": sequential}


@dataclass
class LoopRun:
    """What one plain training loop produced and how dynamo treated it."""

    history: pd.DataFrame | None
    losses: list[float]
    compiles: list[int]  # graphs compiled during each step (its eval pass included)
    calls: list[int]  # compiled graphs called during each step
    graph_breaks: int
    internal: list[str]

    @property
    def compile_steps(self) -> list[int]:
        return [k for k, n in enumerate(self.compiles) if n]


def plain_loop(
    model: str = "net",
    how: str | None = "wrap",
    with_nndiag: bool = True,
    steps: int = STEPS,
    eval_every: int = 0,
    batch_size: Callable[[int], int] = lambda k: 8,
    inner: str | None = None,
    fullgraph: bool = False,
    **options: Any,
) -> LoopRun:
    """Train ``MODELS[model]`` for ``steps`` steps, compiled ``how`` (None: not compiled), optionally with a Monitor."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    net = MODELS[model]()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    counter = GraphCounter(inner)
    call: nn.Module = net
    if how == "wrap":
        call = torch.compile(net, backend=counter, fullgraph=fullgraph)
    elif how == "in-place":
        net.compile(backend=counter, fullgraph=fullgraph)
    gen = torch.Generator().manual_seed(1)
    losses: list[float] = []
    compiles: list[int] = []
    calls: list[int] = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        mon = Monitor(net, opt, log_dir=None, **options) if with_nndiag else None
        for k in range(steps):
            before = (counter.compiles, counter.calls)
            n = batch_size(k)
            x, y = torch.randn(n, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)
            loss = nn.functional.cross_entropy(call(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if mon is not None:
                mon.step(loss)
            losses.append(float(loss))
            if eval_every and k % eval_every == eval_every - 1:
                net.eval()
                with torch.no_grad():
                    call(torch.randn(n, 8, generator=gen) + 10.0)  # far off: it would show in the input statistics
                net.train()
            compiles.append(counter.compiles - before[0])
            calls.append(counter.calls - before[1])
        if mon is not None:
            mon.close()
    internal = [str(w.message) for w in records if issubclass(w.category, NndiagInternalWarning)]
    history = mon.history if mon is not None else None
    return LoopRun(history, losses, compiles, calls, sum(counters["graph_break"].values()), internal)


def assert_same_statistics(got: pd.DataFrame, ref: pd.DataFrame, rename: Callable[[str], str] = str) -> None:
    """The same (step, layer, stat) rows, with values equal within float tolerance (NaN where NaN)."""
    got = got.assign(layer=got.layer.map(rename))
    merged = ref.merge(got, on=KEY, how="outer", suffixes=("_ref", "_got"), indicator=True)
    missing = merged[merged._merge != "both"]
    assert missing.empty, f"rows in only one of the runs:\n{missing[[*KEY, '_merge']].head(20)}"
    for row in merged.itertuples():
        if math.isnan(row.value_ref):
            assert math.isnan(row.value_got), row
        else:
            assert row.value_got == pytest.approx(row.value_ref, rel=1e-5, abs=1e-6), row


def logging_steps(n: int) -> list[int]:
    return [k for k in range(n) if default_schedule(k)]


def assert_recorded(h: pd.DataFrame, layers: list[str], params: list[str], steps: list[int]) -> None:
    """Activation statistics of every layer, and gradient / update statistics of every parameter, at ``steps``."""
    for layer in [*layers, "input"]:
        assert sorted(h[(h.stat == "act_std") & (h.layer == layer)].step) == steps, layer
    for name in params:
        for s in ("grad_norm", "update_ratio"):
            rows = h[(h.stat == s) & (h.layer == name)]
            assert sorted(rows.step) == steps, (name, s)
            assert (rows.value > 0).all(), (name, s)


def assert_model_recorded(h: pd.DataFrame, model: str) -> None:
    """:func:`assert_recorded` for every leaf module and parameter of ``MODELS[model]`` (default schedule)."""
    net = MODELS[model]()
    layers = [n for n, m in net.named_modules() if n and not list(m.children())]
    assert_recorded(h, layers, [n for n, _ in net.named_parameters()], logging_steps(STEPS))


def assert_no_storm(got: LoopRun, base: LoopRun, quiet_from: int = FIRST_QUIET_STEP) -> None:
    """The bound of the module docstring, for runs with (``got``) and without (``base``) nndiag.

    One compiled frame runs the hooks in training mode here (the model's forward, or Lightning's training_step).
    """
    assert got.graph_breaks == base.graph_breaks, "nndiag broke a graph"
    assert got.calls == base.calls, "every step calls as many compiled graphs as without nndiag"
    assert sum(got.compiles) <= sum(base.compiles) + EXTRA_VARIANTS, (got.compile_steps, base.compile_steps)
    late = [k for k in got.compile_steps if k > quiet_from]
    assert late == [k for k in base.compile_steps if k > quiet_from], "switching logging on and off recompiled"


# --------------------------------------------------------------------------------------
# plain loops
# --------------------------------------------------------------------------------------

LOOPS = [
    pytest.param({"model": "net", "how": "wrap"}, id="torch.compile(model)"),
    pytest.param({"model": "net", "how": "in-place"}, id="model.compile()"),
    pytest.param({"model": "sequential", "how": "wrap", "fullgraph": True}, id="fullgraph-nn.Sequential"),
    pytest.param({"model": "net", "how": "wrap", "inner": "aot_eager", "histograms": True}, id="aot_eager-histograms"),
    pytest.param(
        {"model": "net", "how": "wrap", "eval_every": 5, "batch_size": lambda k: 5 if k % 7 == 3 else 8},
        id="eval-passes-and-varying-batch-size",
    ),
]


@pytest.mark.parametrize("setup", LOOPS)
def test_compiled_plain_loop(setup: dict[str, Any]) -> None:
    """Statistics as without compiling, losses as without nndiag, and no recompilation storm."""
    base = plain_loop(with_nndiag=False, **setup)
    got = plain_loop(**setup)
    ref = plain_loop(**{**setup, "how": None})
    assert got.internal == ref.internal == []
    assert got.losses == base.losses, "nndiag changed what the compiled model computes"
    assert got.history is not None and ref.history is not None
    assert_same_statistics(got.history, ref.history)
    assert_model_recorded(got.history, setup["model"])
    assert_no_storm(got, base)
    if setup.get("eval_every"):
        assert got.history[got.history.layer == "input"].value.abs().max() < 5.0, "an eval pass was recorded"


def test_traced_hooks_are_never_parked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooks a compiled graph traced stay registered on quiet steps even where dynamo's counters say nothing.

    (``activations._dynamo_used`` reads dynamo's frame counter; a graph traced while the hooks were parked would
    never call them again, and taking traced hooks off recompiles: hooks that see themselves traced stay.)
    """
    monkeypatch.setattr(nndiag.collect.activations, "_dynamo_used", lambda: False)
    base = plain_loop(with_nndiag=False)
    got = plain_loop()
    assert got.internal == []
    assert got.history is not None
    assert_model_recorded(got.history, "net")
    assert_no_storm(got, base)


def test_fallback_without_the_eager_frame_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where dynamo's private frame rule is missing, the root's input hook is its own small graph: still bounded.

    It is compiled in at most three variants (first logging step, later logging steps, and once dynamo has skipped it
    after an empty non-logging trace, ``ErrorGuard.run``), and adds one graph call to logging steps only.
    """
    try:
        from torch._dynamo.eval_frame import FrameAction, FrameExecStrategy, set_code_exec_strategy
    except ImportError:
        pytest.skip("this torch has no frame exec strategies: the fallback is what test_compiled_plain_loop measures")
    monkeypatch.setattr(nndiag.collect.activations, "_root_hook_eager_as_frame", lambda: None)
    default = FrameExecStrategy(FrameAction.DEFAULT, FrameAction.DEFAULT)
    set_code_exec_strategy(ActivationCollector._root_pre_hook.__code__, default)  # undo earlier tests' rule
    base = plain_loop(with_nndiag=False)
    got = plain_loop()
    assert got.internal == []
    assert got.graph_breaks == base.graph_breaks == 0
    logging = logging_steps(STEPS)
    assert [got.calls[k] - base.calls[k] for k in range(STEPS)] == [int(k in logging) for k in range(STEPS)]
    assert sum(got.compiles) <= sum(base.compiles) + EXTRA_VARIANTS + 3
    assert max(got.compile_steps) <= 30, "compiles end at the first logging step after a non-logging one"


class Spiky(nn.Module):
    """Puts NaN, +Inf and -Inf at fixed places of a copy of its input."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        flat = torch.arange(h.numel()).reshape(h.shape)
        out = torch.where(flat % 11 == 0, torch.nan, h)
        return torch.where(flat % 13 == 1, torch.inf, torch.where(flat % 17 == 2, -torch.inf, out))


class SpikyNet(Net):
    def __init__(self) -> None:
        super().__init__()
        self.spiky = Spiky()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.fc1(x))
        self.spiky(h)  # observed only
        return self.head(self.act2(self.fc2(h)))


def raw_step(compiled: bool) -> tuple[dict[tuple[str, str], float], dict[str, list[float]]]:
    """One armed forward pass through an ActivationCollector with histograms: raw statistics and histograms."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = SpikyNet()
    col = ActivationCollector(net, ErrorGuard(), histograms=True, bins=7)
    col.attach()
    col.arm()
    call = torch.compile(net, backend=GraphCounter()) if compiled else net
    call(torch.randn(6, 8, generator=torch.Generator().manual_seed(2)))
    keys, values, extras = col.pack()
    raw = {k: float(v) for k, v in zip(keys, values, strict=True)}
    raw.update({(n, s): v for n, s, v in extras})
    names, hists = col.histograms_packed()
    col.detach()
    return raw, {n: h.tolist() for n, h in zip(names, hists, strict=True)}


def test_compiled_reductions_and_histograms_match_eager() -> None:
    """Non-finite counts and histograms (non-finite values left out) are computed in the graph as in eager mode."""
    eager_raw, eager_hists = raw_step(compiled=False)
    got_raw, got_hists = raw_step(compiled=True)
    assert eager_raw[("spiky", "_nonfinite")] > 0, "the test needs non-finite values"
    # eager on CPU leaves out a non-finite count it knows is 0; in a graph it is always counted
    eager_raw = {key: 0.0 for key in got_raw if key[1] == "_nonfinite"} | eager_raw
    assert sorted(got_raw) == sorted(eager_raw)
    for key, value in eager_raw.items():
        if math.isnan(value):
            assert math.isnan(got_raw[key]), key
        else:
            assert got_raw[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert sorted(got_hists) == sorted(eager_hists)
    for name, hist in eager_hists.items():
        assert all(math.isfinite(v) for v in hist), name
        assert got_hists[name] == pytest.approx(hist, rel=1e-5, abs=1e-6), name
    finite = 6 * 16 - eager_raw[("spiky", "_nonfinite")]
    assert sum(eager_hists["spiky"][8:]) == finite, "the histogram counts the finite values only"


def test_internal_error_under_compile_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure inside a traced hook: one warning naming the site, and the same statistics as in eager mode."""

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(nndiag.collect.activations, "unit_max", failing)
    got = plain_loop(steps=3, schedule=1)  # 15 failures: fewer than the 20 that switch the site off
    ref = plain_loop(how=None, steps=3, schedule=1)
    base = plain_loop(with_nndiag=False, steps=3)
    assert len(got.internal) == 1, got.internal
    assert "'activation statistics'" in got.internal[0]
    assert "injected failure" in got.internal[0]
    assert got.losses == base.losses
    assert got.history is not None and ref.history is not None
    assert_same_statistics(got.history, ref.history)
    h = got.history
    assert sorted(h[(h.stat == "act_std") & (h.layer == "input")].step) == [0, 1, 2]
    assert sorted(h[(h.stat == "update_ratio") & (h.layer == "fc1.weight")].step) == [0, 1, 2]


def test_inductor_backend() -> None:
    """The default backend (~15 s on CPU, ~3 s with a warm cache): every variant compiles and agrees with eager.

    The variants: the first logging step, a later logging step, a non-logging step (schedule: all but step 2).
    """

    def run(compiled: bool) -> pd.DataFrame:
        torch._dynamo.reset()
        torch.manual_seed(0)
        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        call = torch.compile(net) if compiled else net
        gen = torch.Generator().manual_seed(1)
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            with Monitor(net, opt, log_dir=None, schedule=lambda k: k != 2) as mon:
                for _ in range(4):
                    x, y = torch.randn(8, 8, generator=gen), torch.randint(0, 3, (8,), generator=gen)
                    loss = nn.functional.cross_entropy(call(x), y)
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
                    mon.step(loss)
        assert not [w for w in records if issubclass(w.category, NndiagInternalWarning)]
        return mon.history

    ref = run(compiled=False)
    got = run(compiled=True)
    assert sorted(got[got.stat == "act_std"].step.unique()) == [0, 1, 3]
    merged = ref.merge(got, on=KEY, how="outer", indicator=True)
    assert (merged._merge == "both").all()
    assert merged.value_y.to_numpy() == pytest.approx(merged.value_x.to_numpy(), rel=1e-4, abs=1e-5)


# --------------------------------------------------------------------------------------
# Lightning
# --------------------------------------------------------------------------------------

LIGHTNING_STEPS = 32  # logging steps 0-20 and 30; validation after steps 9, 19, 29


def lightning_run(pkg: str, how: str | None, with_nndiag: bool, root: Any) -> tuple[LoopRun, Any]:
    """Fit a LightningModule whose model is compiled ``how``: its submodule, or the module itself."""
    L = lightning(pkg)
    torch._dynamo.reset()
    counters.clear()
    counter = GraphCounter()
    torch.manual_seed(0)
    compiles: list[int] = []
    calls: list[int] = []
    losses: list[float] = []

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            net = Net()
            self.net = torch.compile(net, backend=counter) if how == "compiled-submodule" else net
            self.seen = (0, 0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            compiles.append(counter.compiles - self.seen[0])
            calls.append(counter.calls - self.seen[1])
            self.seen = (counter.compiles, counter.calls)
            losses.append(float(outputs["loss"]))

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    module: Any = Module()
    if how == "compiled-lightning-module":
        module = torch.compile(module, backend=counter)
    gen = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(8 * LIGHTNING_STEPS, 8, generator=gen),
        torch.randint(0, 3, (8 * LIGHTNING_STEPS,), generator=gen),
    )
    xv, yv = torch.randn(16, 8, generator=gen) + 10.0, torch.randint(0, 3, (16,), generator=gen)
    cb = DiagnosticsCallback()
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        fit(
            pkg,
            module,
            loader(x, y, 8),
            [cb] if with_nndiag else [],
            root,
            val=loader(xv, yv, 8),
            val_check_interval=10,
            limit_val_batches=2,
        )
    internal = [str(w.message) for w in records if issubclass(w.category, NndiagInternalWarning)]
    run = LoopRun(cb.history, losses, compiles, calls, sum(counters["graph_break"].values()), internal)
    return run, cb


def uncompiled_name(name: str) -> str:
    """A compiled submodule's names pass through its OptimizedModule: ``net._orig_mod.fc1`` is ``net.fc1``."""
    return name.replace("._orig_mod", "")


def check_lightning(pkg: str, how: str, root: Any) -> None:
    base, _ = lightning_run(pkg, how, with_nndiag=False, root=root / "base")
    got, cb = lightning_run(pkg, how, with_nndiag=True, root=root / "got")
    ref, _ = lightning_run(pkg, None, with_nndiag=True, root=root / "ref")
    assert got.internal == ref.internal == []
    assert cb.session.step == LIGHTNING_STEPS
    assert got.losses == base.losses, "nndiag changed what the compiled model computes"
    assert_same_statistics(got.history, ref.history, rename=uncompiled_name)
    h = got.history.assign(layer=got.history.layer.map(uncompiled_name))
    layers = ["net.fc1", "net.act1", "net.fc2", "net.act2", "net.head"]
    params = [f"net.{n}" for n, _ in Net().named_parameters()]
    assert_recorded(h, layers, params, logging_steps(LIGHTNING_STEPS))
    assert h[h.layer == "input"].value.abs().max() < 5.0, "a validation batch was recorded"
    assert_no_storm(got, base)


def test_lightning_compiled_submodule(pkg: str, tmp_path: Any) -> None:
    """``self.net = torch.compile(net)`` in the LightningModule, validation inside fit."""
    check_lightning(pkg, "compiled-submodule", tmp_path)


def test_lightning_compiled_module(tmp_path: Any) -> None:
    """``trainer.fit(torch.compile(module))``: Lightning compiles training_step, which calls the hooked root."""
    check_lightning("lightning.pytorch", "compiled-lightning-module", tmp_path)


class Holder(nn.Module):
    """A model holding a compiled submodule (as a LightningModule's ``self.net = torch.compile(net)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.compile(Net(), backend=GraphCounter())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_compiled_submodule_names_match_uncompiled() -> None:
    torch._dynamo.reset()
    model = Holder()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Monitor(model, opt, log_dir=None, schedule=1) as mon:
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        mon.step()
    assert set(mon.history.layer) >= {"net.fc1", "net.fc1.weight"}
