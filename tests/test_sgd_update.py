"""Update ratios read from SGD's momentum buffers (no weight copy) agree with the copy, and only where exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nndiag.collect.params import ParamCollector, sgd_update_plan


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))
    return model


def _ratios(model: nn.Module, opt: torch.optim.Optimizer, pass_optimizer: bool, steps: int = 3) -> list[dict]:
    """update_ratio-ready raw values (_wb, _delta) per step, with the optimizer shown to snapshot or not."""
    col = ParamCollector(model, "exact")
    out = []
    torch.manual_seed(1)
    for step in range(steps):
        x = torch.randn(16, 6)
        loss = model(x).pow(2).mean() if step != 1 else model[:3](x).pow(2).mean()  # step 1: model[3] gets no grad
        opt.zero_grad(set_to_none=True)
        loss.backward()
        col.capture_grads()
        col.snapshot(opt if pass_optimizer else None)
        used_buffers = col.sgd is not None
        opt.step()
        if col.sgd is not None:
            col.sgd.stepped()  # the recorder's post-step hook
        keys, values = col.pack()
        out.append({"buffers": used_buffers, **{k: float(v) for k, v in zip(keys, values, strict=True)}})
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5, dampening=0.3, weight_decay=1e-2),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, maximize=True, foreach=False),
    ],
    ids=["momentum", "dampening-decay", "maximize-loop"],
)
def test_buffer_path_matches_the_copy(make):
    a, b = _model(), _model()
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    fast = _ratios(a, make(a.parameters()), pass_optimizer=True)
    slow = _ratios(b, make(b.parameters()), pass_optimizer=False)
    assert all(s["buffers"] for s in fast) and not any(s["buffers"] for s in slow)
    for f, s in zip(fast, slow, strict=True):
        assert set(f) == set(s)
        for key, value in s.items():
            if key == "buffers":
                continue
            if key[1] == "_delta":  # the optimizer's update vs the rounded change of the float32 weights
                wb = s[(key[0], "_wb")]
                assert f[key] == pytest.approx(value, rel=1e-5, abs=2**-24 * wb + 1e-12), key
            else:
                assert f[key] == pytest.approx(value, rel=1e-6), key
    # a parameter without a gradient is not moved: exactly 0 on both paths (weights_not_updating reads 0)
    assert fast[1][("3.weight", "_delta")] == 0.0 == slow[1][("3.weight", "_delta")]
    assert fast[2][("3.weight", "_delta")] > 0


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1),  # no momentum: no buffer
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        lambda ps: torch.optim.SGD(ps, lr=torch.tensor(0.1), momentum=0.9),
        lambda ps: torch.optim.Adam(ps, lr=1e-3),
        lambda ps: type("MySGD", (torch.optim.SGD,), {})(ps, lr=0.1, momentum=0.9),  # a subclass may step otherwise
    ],
    ids=["plain-sgd", "nesterov", "tensor-lr", "adam", "subclass"],
)
def test_no_plan_where_the_update_is_not_lr_times_buffer(make):
    model = _model()
    assert sgd_update_plan(make(model.parameters()), list(model.named_parameters())) is None


def test_no_plan_for_half_precision_or_parameters_of_another_optimizer():
    model = _model()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9)
    assert sgd_update_plan(opt, list(model.named_parameters())) is None  # model[2], model[3] train elsewhere
    half = _model().to(torch.bfloat16)
    opt = torch.optim.SGD(half.parameters(), lr=0.1, momentum=0.9)
    assert sgd_update_plan(opt, list(half.named_parameters())) is None  # rounding may swallow the update


def test_missing_buffer_gives_weight_norms_not_a_wrong_ratio():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    col = ParamCollector(model, "exact")
    model(torch.randn(4, 6)).sum().backward()
    col.capture_grads()
    col.snapshot(opt)
    assert col.sgd is not None
    col.sgd.stepped()  # as if the step ran, but no opt.step(): no momentum buffer exists
    keys, _ = col.pack()
    assert not any(stat == "_delta" for _, stat in keys)
    assert ("0.weight", "weight_norm") in keys
