"""nndiag takes its forward hooks off the modules on quiet steps and puts them back in their place.

A hooked module leaves torch's fast call path, so on non-logging steps of an eager model nndiag's hooks are parked
(:mod:`nndiag.collect.hook_parking`). What must hold: the statistics are those of a run whose hooks stay, the user's
hooks run in the order they were registered in (before and after nndiag's, also those registered while parked),
nothing is left after close, and under ``torch.compile`` nothing is parked (``test_compile.py`` counts the graphs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from helpers import fit, lightning, loader, make_module
from torch import nn

import nndiag.collect.activations as activations
from nndiag import DiagnosticsCallback, Monitor
from nndiag.collect.hook_parking import HookParking
from nndiag.demo.models import blobs, mlp

SCHEDULE = [0, 1, 2, 5, 6, 9]  # logging steps: runs of logging steps, and quiet steps between them
STEPS = 10


def hooked(model: nn.Module) -> list[str]:
    return [n or "<root>" for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def train(seen: list[list[str]] | None = None, order: list[str] | None = None, **options: object) -> pd.DataFrame:
    """An MLP over blobs; ``seen``: per step, the modules with any forward hook while the step's forward runs."""
    torch.manual_seed(0)
    x, y = blobs(n=16 * STEPS, features=8, classes=3, seed=0)
    model = mlp(8, 3, hidden=16, depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if order is not None:
        model[0].register_forward_hook(lambda m, a, o: order.append("user before"))
    with Monitor(model, opt, log_dir=None, schedule=lambda k: k in SCHEDULE, **options) as mon:
        if order is not None:
            model[0].register_forward_hook(lambda m, a, o: order.append("user after"))
        for k in range(STEPS):
            if seen is not None:
                seen.append(hooked(model))
            if order is not None:
                order.append(f"step {k}")
                if k == 4:  # while parked: runs after nndiag's hook once that is back
                    model[0].register_forward_hook(lambda m, a, o: order.append("user late"))
            xb, yb = x[16 * k : 16 * (k + 1)], y[16 * k : 16 * (k + 1)]
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    assert mon.history is not None
    if order is None:
        assert hooked(model) == [], "hooks left after close"
    return mon.history


def test_quiet_steps_run_without_hooks() -> None:
    seen: list[list[str]] = []
    train(seen)
    with_hooks = [k for k, mods in enumerate(seen) if mods]
    assert with_hooks == SCHEDULE, "hooks on exactly the logging steps"
    assert {"<root>", "0", "1"} <= set(seen[0])


def test_same_statistics_as_hooks_that_stay() -> None:
    kept_seen: list[list[str]] = []
    kept = train(kept_seen, park_hooks=False)
    seen: list[list[str]] = []
    parked = train(seen)
    assert all(kept_seen) and not seen[3], "park_hooks=False kept the hooks on every step, the default parked them"
    key = ["step", "layer", "stat"]
    pd.testing.assert_frame_equal(
        parked.sort_values(key).reset_index(drop=True)[[*key, "value"]],
        kept.sort_values(key).reset_index(drop=True)[[*key, "value"]],
    )


def test_lightning_parks_between_logging_steps(tmp_path: Path) -> None:
    """Under a Lightning ``Trainer`` (validation passes between) the hooks are off exactly on quiet steps."""
    L = lightning()
    seen: list[bool] = []

    class Spy(L.Callback):
        def on_before_backward(self, trainer: Any, module: Any, loss: torch.Tensor) -> None:
            seen.append(bool(hooked(module)))

    x, y = blobs(n=16 * 30, features=8, classes=3, seed=0)
    cb = DiagnosticsCallback(schedule=lambda k: k < 3 or k % 10 == 0, tensorboard=False, store=False)
    fit("lightning.pytorch", make_module("lightning.pytorch", mlp(8, 3, hidden=16, depth=2)), loader(x, y, 16),
        [cb, Spy()], tmp_path, val=loader(x[:64], y[:64], 16), val_check_interval=7)  # fmt: skip
    assert [k for k, on in enumerate(seen) if on] == [0, 1, 2, 10, 20]
    assert cb.history is not None
    assert sorted(set(cb.history[cb.history.stat == "act_std"].step)) == [0, 1, 2, 10, 20]


def test_user_hooks_keep_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """nndiag's hook runs between the user's hooks registered before and after it, also once put back."""
    order: list[str] = []
    record = activations.ActivationCollector._record

    def spy(self: activations.ActivationCollector, name: str, *args: object) -> None:
        if name == "0":
            order.append("nndiag")
        record(self, name, *args)

    monkeypatch.setattr(activations.ActivationCollector, "_record", spy)
    train(order=order)
    steps: dict[int, list[str]] = {}
    for item in order:
        if item.startswith("step "):
            current = steps[int(item.split()[1])] = []
        else:
            current.append(item)
    for k in range(STEPS):
        user = ["user before", "user after"] + (["user late"] if k >= 4 else [])
        want = [user[0], "nndiag", *user[1:]] if k in SCHEDULE else user
        assert steps[k] == want, k


def test_nothing_parked_once_dynamo_was_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activations, "_dynamo_used", lambda: True)
    seen: list[list[str]] = []
    train(seen)
    assert all(seen), "hooks stay registered on every step"


def test_parking_restores_flags_and_tolerates_removed_hooks() -> None:
    lin = nn.Linear(2, 2)
    calls: list[str] = []
    pre = lin.register_forward_pre_hook(lambda m, a, kw: calls.append(f"pre {sorted(kw)}"), with_kwargs=True)
    post = lin.register_forward_hook(lambda m, a, o: calls.append("post"), always_call=True)
    gone = lin.register_forward_hook(lambda m, a, o: calls.append("gone"))
    parking = HookParking([pre, post, gone])
    gone.remove()
    parking.park()
    assert not lin._forward_hooks and not lin._forward_pre_hooks
    assert not lin._forward_pre_hooks_with_kwargs and not lin._forward_hooks_always_called
    lin(torch.zeros(1, 2))
    assert calls == []
    parking.restore()
    lin(input=torch.zeros(1, 2))
    assert calls == ["pre ['input']", "post"]
    assert not parking.is_parked
    for h in (pre, post):
        h.remove()
    parking.park()
    parking.restore()
    assert not lin._forward_hooks and not lin._forward_pre_hooks, "a removed hook stays removed"


def test_hooks_registered_while_parked_keep_their_side() -> None:
    lin = nn.Linear(2, 2)
    calls: list[str] = []
    before = lin.register_forward_hook(lambda m, a, o: calls.append("before"))
    ours = lin.register_forward_hook(lambda m, a, o: calls.append("ours"))
    lin.register_forward_hook(lambda m, a, o: calls.append("after"))
    parking = HookParking([ours])
    parking.park()
    lin.register_forward_hook(lambda m, a, o: calls.append("appended"))
    lin.register_forward_hook(lambda m, a, o: calls.append("prepended"), prepend=True)
    parking.restore()
    lin(torch.zeros(1, 2))
    assert calls == ["prepended", "before", "ours", "after", "appended"]
    calls.clear()
    before.remove()
    parking.park()
    parking.restore()
    lin(torch.zeros(1, 2))
    assert calls == ["prepended", "ours", "after", "appended"]
