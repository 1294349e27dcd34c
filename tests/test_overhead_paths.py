"""The cheap paths of recording (issue #16) keep their promises and their numbers.

* a non-logging step does no tensor arithmetic and never reads a value to the host;
* the weight copy is kept across short gaps between logging steps and freed across long ones;
* the fused in-place update distances equal the plain ``||after - before||``, in fp32 and bf16;
* one stack per packet keeps large counts exact beside half-precision values;
* an advisor check yields between rules and leaves the interpreter's switch interval as it was.
"""

from __future__ import annotations

import collections
import math
import sys
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nndiag import Monitor
from nndiag.advice import AdvisorLoop, fine_switching
from nndiag.advisor import Advisor
from nndiag.collect.packet import Packet
from nndiag.collect.params import ParamCollector

# metadata-only ops: the loss kept for the next logging packet is a detached 0-d view
VIEW_OPS = {"detach", "view", "reshape", "_reshape_alias", "alias", "_unsafe_view", "squeeze", "unsqueeze"}


class OpLog(TorchDispatchMode):
    """Names of the aten ops dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def _step_ops(mon: Monitor | None, model: nn.Module, opt: torch.optim.Optimizer) -> collections.Counter[str]:
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with OpLog() as log:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss, target=y)
    return log.ops


def test_non_logging_steps_do_no_tensor_work(tmp_path: Any) -> None:
    """Beyond the user's own ops, a non-logging step adds only metadata views, and no host read."""
    plain_model, watched_model = _model(), _model()
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.1)
    watched_opt = torch.optim.SGD(watched_model.parameters(), lr=0.1)
    mon = Monitor(watched_model, watched_opt, log_dir=str(tmp_path), schedule=lambda s: s == 0, tensorboard=False)
    try:
        _step_ops(mon, watched_model, watched_opt)  # step 0 logs
        _step_ops(None, plain_model, plain_opt)
        for _ in range(5):  # fewer than max_pending_losses: no loss flush either
            plain = _step_ops(None, plain_model, plain_opt)
            watched = _step_ops(mon, watched_model, watched_opt)
            extra = watched - plain
            assert set(extra) <= VIEW_OPS, f"tensor work on a non-logging step: {dict(extra)}"
            assert "_local_scalar_dense" not in watched, "a host read on a non-logging step"
    finally:
        mon.close()


def test_weight_copy_kept_across_short_gaps_freed_across_long_ones(tmp_path: Any) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logging_steps = {0, 5, 40}  # 5 steps apart: keep the copy; 35 apart: free it
    mon = Monitor(model, opt, log_dir=str(tmp_path), schedule=lambda s: s in logging_steps, tensorboard=False)
    held: dict[int, bool] = {}
    try:
        for step in range(42):
            _step_ops(mon, model, opt)
            held[step] = mon.session.recorder.params._buffer is not None
    finally:
        mon.close()
    assert held[0] and held[3], "the copy is kept for the logging step 5 steps later"
    assert not held[5] and not held[20], "35 steps to the next logging step: the copy is freed"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_update_distances_in_place_match_reference(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 2)).to(dtype)
    col = ParamCollector(model, "exact", 16)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    col.capture_grads()
    col.snapshot()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.01)
    keys, values = col.pack()
    got = {k: float(v) for k, v in zip(keys, values, strict=True) if k[1] == "_delta"}
    names = [n for n, _ in model.named_parameters()]
    for name, b, p in zip(names, before, model.parameters(), strict=True):
        want = float(torch.linalg.vector_norm(p.detach().float() - b.float()))
        assert math.isclose(got[(name, "_delta")], want, rel_tol=1e-5), name
    # the next step starts from a fresh copy: the overwritten buffer is never read as weights
    col.snapshot()
    assert all(torch.equal(b, p.detach()) for b, p in zip(col.before or [], model.parameters(), strict=True))


def test_packet_keeps_large_counts_exact_beside_half_precision() -> None:
    big = torch.tensor(1_234_567)  # a count (int64): fp16 would overflow, bf16 round it
    p = Packet.build(0, keys=[("a", "x"), ("a", "n")], scalars=[torch.tensor(0.5, dtype=torch.bfloat16), big])
    values = dict(zip(p.keys, p.values.tolist(), strict=True))
    assert values[("a", "n")] == 1_234_567 and values[("a", "x")] == 0.5


def test_advisor_check_yields_between_rules_and_restores_switch_interval() -> None:
    import pandas as pd

    loop = AdvisorLoop(min_interval=0.0, log=False)
    pauses: list[float] = []
    loop.advisor.pause = lambda: pauses.append(sys.getswitchinterval())
    before = sys.getswitchinterval()
    h = pd.DataFrame({"step": [0, 1], "layer": ["", ""], "stat": ["loss"] * 2, "value": [2.3, 2.2]})
    loop.run(h, {})
    assert len(pauses) >= 2, "the check paused between its rules"
    assert max(pauses) < before, "the rules ran with a finer switch interval"
    assert sys.getswitchinterval() == before
    with pytest.raises(RuntimeError), fine_switching():
        raise RuntimeError("a failing check")
    assert sys.getswitchinterval() == before


def test_plain_advisor_does_not_pause() -> None:
    """The calibration suite and reports call Advisor directly: no sleeping there."""
    assert Advisor().pause is None


def test_stacked_packs_mixed_scalars_exactly() -> None:
    from nndiag.collect.packet import _stacked

    count = torch.tensor(4097)  # exact in fp32, rounded to 4096 in bf16: stacking with bf16 alone would lose it
    got = _stacked([count, torch.tensor(0.5, dtype=torch.bfloat16), torch.tensor(True)])
    assert got.dtype == torch.float32 and got.tolist() == [4097.0, 0.5, 1.0]
    assert _stacked([torch.tensor([3.0]), torch.tensor(4.0)]).tolist() == [3.0, 4.0]  # 1-element 1-D with 0-d
    assert _stacked([torch.tensor(7), torch.tensor(1.0, dtype=torch.float64)]).tolist() == [7.0, 1.0]
