"""Monitor inside Hugging Face Accelerate loops: wrapped optimizers, accumulate(), backward()."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from nndiag import Monitor, load_run
from nndiag.collect.optimizers import UnhookedOptimizer, hookable, unwrap_optimizer
from nndiag.guard import NndiagInternalWarning

accelerate = pytest.importorskip("accelerate")


def make(accumulate: int, batches: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    acc = accelerate.Accelerator(gradient_accumulation_steps=accumulate, cpu=True)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ds = torch.utils.data.TensorDataset(torch.randn(16 * batches, 8), torch.randint(0, 3, (16 * batches,)))
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    model, opt, loader = acc.prepare(model, opt, loader)
    return acc, model, opt, loader


def count_inner_steps(opt) -> list[int]:
    steps: list[int] = []
    inner = opt.optimizer  # the torch optimizer the AcceleratedOptimizer wraps
    inner.register_step_post_hook(lambda *a: steps.append(1))
    return steps


@pytest.mark.parametrize("accumulate", [1, 3], ids=["no_accumulation", "accumulate_3"])
def test_accelerate_loop_counts_optimizer_steps(tmp_path, accumulate):
    acc, model, opt, loader = make(accumulate)
    assert type(opt).__name__ == "AcceleratedOptimizer"
    assert not hookable(opt) and unwrap_optimizer(opt) is opt.optimizer
    real_steps = count_inner_steps(opt)
    micro: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", NndiagInternalWarning)  # a hookable wrapper: no fallback warning
        mon = Monitor(model, opt, log_dir=tmp_path, schedule=1)
    with mon:
        for x, y in loader:
            with acc.accumulate(model):
                loss = nn.functional.cross_entropy(model(x), y)
                acc.backward(loss)
                opt.step()
                opt.zero_grad()
            micro.append(loss.item())
            mon.step(loss)
    assert len(real_steps) == 12 // accumulate
    assert mon.steps == len(real_steps)
    h = load_run(mon.log_dir).history
    loss = h[h.stat == "loss"].sort_values("step")
    assert loss.step.tolist() == list(range(len(real_steps)))
    # the loss of a step is the mean of its micro-batches' losses (the user's, not accelerate's scaled one)
    expected = [sum(micro[i : i + accumulate]) / accumulate for i in range(0, 12, accumulate)]
    assert loss.value.tolist() == pytest.approx(expected, rel=1e-5)
    # statistics of every layer, update ratios measured around the real step
    assert {"0", "2", "4"} <= set(h[h.stat == "act_std"].layer)
    ratios = h[h.stat == "update_ratio"]
    assert len(ratios) and (ratios.value > 0).all()
    assert h[h.stat == "lr"].value.iloc[0] == pytest.approx(1e-2)


def test_accelerate_no_hook_left_after_close(tmp_path):
    acc, model, opt, loader = make(1, batches=2)
    inner = opt.optimizer
    before = (len(inner._optimizer_step_pre_hooks), len(inner._optimizer_step_post_hooks))
    with Monitor(model, opt, log_dir=None) as mon:
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    assert (len(inner._optimizer_step_pre_hooks), len(inner._optimizer_step_post_hooks)) == before
    assert mon.steps == 2


class OpaqueWrapper:
    """A wrapper that keeps its optimizer where nndiag cannot find it."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self._hidden = opt
        self.param_groups = opt.param_groups

    def step(self) -> None:
        self._hidden.step()

    def zero_grad(self) -> None:
        self._hidden.zero_grad()


def test_unhookable_wrapper_warns_once_and_counts_each_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = OpaqueWrapper(torch.optim.SGD(model.parameters(), lr=0.05))
    with pytest.warns(NndiagInternalWarning, match="cannot hook the step") as record:
        mon = Monitor(model, opt, log_dir=None, schedule=1)
    assert len([w for w in record if issubclass(w.category, NndiagInternalWarning)]) == 1
    assert isinstance(mon.session.recorder.optimizers[0], UnhookedOptimizer)
    with mon:
        for _ in range(5):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    assert mon.steps == 5  # the documented fallback: each mon.step() is one optimizer step
    h = mon.history
    assert h[h.stat == "lr"].value.tolist() == [0.05] * 5
    assert mon.session.facts["optimizers"][0]["class"] == "OpaqueWrapper"


def test_not_an_optimizer_still_rejected():
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match="expects a torch optimizer"):
        Monitor(model, model, log_dir=None)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch.distributed without gloo")
@pytest.mark.timeout(300)
def test_two_process_accelerate_loop(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "dist" / "accelerate_train.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "NNDIAG_REPORT": "0", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTEST_CURRENT_TEST", None)
    proc = subprocess.run([*cmd, "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["wrapped"] == "DistributedDataParallel" for r in ranks)  # accelerate.prepare wrapped the model
    # 256 samples / 2 ranks / 16 per batch = 8 batches per rank, 2 per optimizer step
    assert all(r["real_steps"] == r["steps"] == 4 for r in ranks)
    assert ranks[0]["log_dir"] is not None and ranks[1]["log_dir"] is None
    assert ranks[0]["layers"] == ["0", "1", "2", "input"]  # the user's names, not DDP's "module.0"
    assert load_run(ranks[0]["log_dir"]).meta["world_size"] == 2
