"""nndiag leaves nothing behind: no hooks, no reference to the model, user hooks intact, user errors propagate."""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from helpers import fit, lightning, loader, make_module, make_trainer
from torch import nn

from nndiag import DiagnosticsCallback, Monitor, load_run
from nndiag.demo.models import blobs, mlp
from nndiag.guard import NndiagInternalWarning

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")


@pytest.fixture(autouse=True)
def no_internal_warnings() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    internal = [str(w.message) for w in caught if issubclass(w.category, NndiagInternalWarning)]
    assert internal == [], f"nndiag reported internal errors: {internal}"


def forward_hooks(model: nn.Module) -> dict[str, int]:
    """Number of forward (pre-)hooks per module, only modules that have any."""
    out = {}
    for name, mod in model.named_modules():
        n = len(mod._forward_hooks) + len(mod._forward_pre_hooks)
        if n:
            out[name or "<root>"] = n
    return out


def assert_no_hooks(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    for name, mod in model.named_modules():
        for attr in HOOK_DICTS:
            assert len(getattr(mod, attr)) == 0, f"{attr} left on module {name or '<root>'!r}"
    for opt in optimizers:
        assert len(opt._optimizer_step_pre_hooks) == 0, "optimizer step pre-hook left"
        assert len(opt._optimizer_step_post_hooks) == 0, "optimizer step post-hook left"
    assert not nn.modules.module._global_forward_hooks
    assert not nn.modules.module._global_forward_pre_hooks


def data(n_batches: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return blobs(n=8 * n_batches, features=8, classes=3, seed=seed)


# --------------------------------------------------------------------------------------
# Lightning
# --------------------------------------------------------------------------------------


def test_lightning_fit_removes_hooks_and_releases_model(pkg: str, tmp_path: Any) -> None:
    x, y = data()
    module = make_module(pkg, mlp(8, 3, hidden=16, depth=2))
    seen_during_training: list[dict[str, int]] = []
    seen_optimizer_hooks: list[int] = []

    class Spy(lightning(pkg).Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            seen_during_training.append(forward_hooks(pl_module))
            opt = trainer.optimizers[0]
            seen_optimizer_hooks.append(len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks))

    cb = DiagnosticsCallback(schedule=1)
    trainer = fit(pkg, module, loader(x, y, 8), [cb, Spy()], tmp_path)
    optimizer = trainer.optimizers[0]

    # the hooks really were there while training (else this test would prove nothing)
    assert seen_during_training
    assert seen_during_training[0]["<root>"] == 1
    assert {"net.0", "net.1", "net.4"} <= set(seen_during_training[0])
    assert seen_optimizer_hooks[0] == 2
    assert_no_hooks(module, [optimizer])

    module_ref, optimizer_ref = weakref.ref(module), weakref.ref(optimizer)
    del module, optimizer, trainer
    gc.collect()
    assert module_ref() is None, "the model is still referenced after fit (callback still alive)"
    assert optimizer_ref() is None, "the optimizer is still referenced after fit"
    assert sorted(cb.history[cb.history.stat == "loss"].step) == list(range(6))  # results outlive the model


def test_lightning_callback_reused_for_second_fit(pkg: str, tmp_path: Any) -> None:
    """A second fit with the same callback gets fresh hooks and leaves none behind either."""
    x, y = data()
    cb = DiagnosticsCallback(schedule=1)
    first = make_module(pkg, mlp(8, 3, 16, 1))
    trainer1 = fit(pkg, first, loader(x, y, 8), [cb], tmp_path / "one")
    second = make_module(pkg, mlp(8, 3, 16, 1))
    trainer2 = fit(pkg, second, loader(x, y, 8), [cb], tmp_path / "two")
    assert_no_hooks(first, trainer1.optimizers)
    assert_no_hooks(second, trainer2.optimizers)
    # the second run is recorded on its own, numbered like its trainer's global_step
    assert trainer2.global_step == cb.session.step == 6
    assert sorted(cb.history[cb.history.stat == "loss"].step) == list(range(6))


# --------------------------------------------------------------------------------------
# Monitor
# --------------------------------------------------------------------------------------


def train_plain(model: nn.Module, opt: torch.optim.Optimizer, mon: Monitor, n_batches: int = 5) -> None:
    x, y = data(n_batches)
    for i in range(n_batches):
        loss = nn.functional.cross_entropy(model(x[8 * i : 8 * (i + 1)]), y[8 * i : 8 * (i + 1)])
        loss.backward()
        opt.step()
        opt.zero_grad()
        mon.step(loss)


@pytest.mark.parametrize("close", [pytest.param("with", id="with-block"), pytest.param("close", id="close()")])
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"histograms": True}, id="histograms"),
        pytest.param({"update_ratio": "sampled", "update_ratio_samples": 8}, id="sampled-update-ratio"),
        pytest.param({"update_ratio": "off"}, id="no-update-ratio"),
    ],
)
def test_monitor_removes_hooks_and_releases_model(close: str, options: dict[str, Any], tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = mlp(8, 3, hidden=16, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if close == "with":
        with Monitor(model, opt, log_dir=tmp_path, schedule=1, **options) as mon:
            assert len(forward_hooks(model)) == 1 + 5  # root pre-hook + 5 leaves
            assert len(opt._optimizer_step_pre_hooks) == len(opt._optimizer_step_post_hooks) == 1
            train_plain(model, opt, mon)
    else:
        mon = Monitor(model, opt, log_dir=tmp_path, schedule=1, **options)
        train_plain(model, opt, mon)
        mon.close()
        mon.close()  # idempotent
    assert_no_hooks(model, [opt])
    model_ref, opt_ref = weakref.ref(model), weakref.ref(opt)
    del model, opt
    gc.collect()
    assert model_ref() is None, "Monitor keeps the model alive after close"
    assert opt_ref() is None, "Monitor keeps the optimizer alive after close"
    h = mon.history
    assert sorted(h[h.stat == "loss"].step) == list(range(5))
    assert load_run(mon.log_dir).meta["status"] == "finished"


def test_monitor_step_after_close_is_harmless() -> None:
    model = mlp(8, 3, 16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(model, opt, log_dir=None, schedule=1)
    train_plain(model, opt, mon, 2)
    mon.close()
    train_plain(model, opt, mon, 2)  # the loop goes on after close: nothing recorded, nothing hooked
    assert_no_hooks(model, [opt])
    assert mon.steps == 2
    assert sorted(mon.history[mon.history.stat == "loss"].step) == [0, 1]


# --------------------------------------------------------------------------------------
# the user's own hooks
# --------------------------------------------------------------------------------------


class Counters:
    def __init__(self) -> None:
        self.forward = 0
        self.pre = 0
        self.pre_kwargs = 0
        self.backward = 0
        self.opt_pre = 0
        self.opt_post = 0


def add_user_hooks(model: nn.Module, opt: torch.optim.Optimizer, c: Counters) -> list[Any]:
    def fwd(mod: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        c.forward += 1
        return out * 1.0  # a hook that replaces the output

    def pre(mod: nn.Module, args: Any) -> None:
        c.pre += 1

    def pre_kwargs(mod: nn.Module, args: Any, kwargs: Any) -> None:
        c.pre_kwargs += 1

    def bwd(mod: nn.Module, grad_in: Any, grad_out: Any) -> None:
        c.backward += 1

    def opt_pre(o: Any, args: Any, kwargs: Any) -> None:
        c.opt_pre += 1

    def opt_post(o: Any, args: Any, kwargs: Any) -> None:
        c.opt_post += 1

    return [
        model[0].register_forward_hook(fwd),
        model.register_forward_pre_hook(pre),
        model.register_forward_pre_hook(pre_kwargs, with_kwargs=True),
        model[2].register_full_backward_hook(bwd),
        opt.register_step_pre_hook(opt_pre),
        opt.register_step_post_hook(opt_post),
    ]


def user_hook_counts(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, ...]:
    return (
        len(model[0]._forward_hooks),
        len(model._forward_pre_hooks),
        len(model._forward_pre_hooks_with_kwargs),
        len(model[2]._backward_hooks),
        len(opt._optimizer_step_pre_hooks),
        len(opt._optimizer_step_post_hooks),
    )


def test_user_hooks_survive_monitor() -> None:
    torch.manual_seed(0)
    model = mlp(8, 3, hidden=16, depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    c = Counters()
    handles = add_user_hooks(model, opt, c)
    before = user_hook_counts(model, opt)
    with Monitor(model, opt, log_dir=None, schedule=1) as mon:
        train_plain(model, opt, mon, 4)
    assert user_hook_counts(model, opt) == before == (1, 2, 1, 1, 1, 1)  # kwargs pre-hooks count in both dicts
    assert (c.forward, c.pre, c.pre_kwargs, c.backward, c.opt_pre, c.opt_post) == (4, 4, 4, 4, 4, 4)
    # they still work after nndiag detached
    loss = model(torch.randn(2, 8)).sum()
    loss.backward()
    opt.step()
    assert (c.forward, c.pre, c.pre_kwargs, c.backward, c.opt_pre, c.opt_post) == (5, 5, 5, 5, 5, 5)
    assert mon.steps == 4
    for h in handles:
        h.remove()
    assert_no_hooks(model, [opt])


def test_user_hooks_survive_lightning(pkg: str, tmp_path: Any) -> None:
    torch.manual_seed(0)
    x, y = data(4)
    net = mlp(8, 3, hidden=16, depth=1)
    c = Counters()
    module = make_module(pkg, net)
    handles: list[Any] = []

    def on_fit_start() -> None:  # the optimizer exists from here on
        handles.extend(add_user_hooks(net, module.trainer.optimizers[0], c))

    module.on_fit_start = on_fit_start
    cb = DiagnosticsCallback(schedule=1)
    trainer = fit(pkg, module, loader(x, y, 8), [cb], tmp_path)
    opt = trainer.optimizers[0]
    assert user_hook_counts(net, opt) == (1, 2, 1, 1, 1, 1)
    assert (c.forward, c.pre, c.pre_kwargs, c.backward, c.opt_pre, c.opt_post) == (4, 4, 4, 4, 4, 4)
    for h in handles:
        h.remove()
    assert_no_hooks(module, [opt])
    assert cb.session.step == 4


# --------------------------------------------------------------------------------------
# the user's exceptions
# --------------------------------------------------------------------------------------


class UserError(Exception):
    pass


class Exploding(nn.Module):
    """Raises inside the forward pass (hooks armed, other modules already recorded) at one call."""

    def __init__(self, at_call: int) -> None:
        super().__init__()
        self.at_call = at_call
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at_call:
            raise UserError("boom in forward")
        return x


@pytest.mark.parametrize(
    "where", [pytest.param("training_step", id="in-training_step"), pytest.param("forward", id="in-forward")]
)
def test_lightning_user_exception_propagates(pkg: str, where: str, tmp_path: Any) -> None:
    x, y = data(6)
    net = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), Exploding(at_call=4 if where == "forward" else 0), nn.Linear(16, 3)
    )
    module = make_module(pkg, net)
    if where == "training_step":
        original = module.training_step

        def training_step(batch: Any, batch_idx: int) -> Any:
            loss = original(batch, batch_idx)  # forward with hooks armed, then fail
            if batch_idx == 3:
                raise UserError("boom in training_step")
            return loss

        module.training_step = training_step
    cb = DiagnosticsCallback(schedule=1)
    trainer = make_trainer(pkg, tmp_path, [cb])
    with pytest.raises(UserError, match="boom"):
        trainer.fit(module, loader(x, y, 8))

    assert_no_hooks(module, trainer.optimizers)
    assert cb.session is not None
    assert cb.session.closed
    run = load_run(cb.log_dir)
    assert run.meta["status"] == "failed"
    assert sorted(run.history[run.history.stat == "loss"].step) == [0, 1, 2]
    module_ref = weakref.ref(module)
    del module, net, trainer
    if where == "training_step":
        del original, training_step
    gc.collect()
    assert module_ref() is None, "the model is still referenced after a failed fit"


def test_monitor_user_exception_propagates(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), Exploding(at_call=3), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match="boom in forward"), Monitor(model, opt, log_dir=tmp_path, schedule=1) as mon:
        train_plain(model, opt, mon, 5)
    assert_no_hooks(model, [opt])
    run = load_run(mon.log_dir)
    assert run.meta["status"] == "failed"
    assert sorted(run.history[run.history.stat == "loss"].step) == [0, 1]
    assert mon.steps == 2
