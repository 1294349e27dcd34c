"""Monitor in Lightning Fabric loops: the optimizer and module Fabric wraps are recorded as the real ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nndiag import Monitor, load_run
from nndiag.collect.optimizers import unwrap_optimizer

fabric_mod = pytest.importorskip("lightning.fabric")


@pytest.mark.parametrize("accumulate", [1, 2], ids=["no_accumulation", "accumulate_2"])
def test_fabric_loop(tmp_path, accumulate):
    torch.manual_seed(0)
    fabric = fabric_mod.Fabric(accelerator="cpu", devices=1)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = fabric.setup(model, opt)
    assert type(opt).__name__.startswith("Fabric") and unwrap_optimizer(opt) is opt.optimizer
    steps: list[int] = []
    opt.optimizer.register_step_post_hook(lambda *a: steps.append(1))
    micro: list[float] = []
    batches = 8
    with Monitor(model, opt, log_dir=tmp_path, schedule=1) as mon:
        for i in range(batches):
            x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
            last = (i + 1) % accumulate == 0
            with fabric.no_backward_sync(model, enabled=not last):
                loss = nn.functional.cross_entropy(model(x), y)
                fabric.backward(loss / accumulate)
            if last:
                opt.step()
                opt.zero_grad()
            micro.append(loss.item())
            mon.step(loss)
    assert len(steps) == batches // accumulate == mon.steps
    h = load_run(mon.log_dir).history
    loss = h[h.stat == "loss"].sort_values("step")
    expected = [sum(micro[i : i + accumulate]) / accumulate for i in range(0, batches, accumulate)]
    assert loss.value.tolist() == pytest.approx(expected, rel=1e-5)
    # layers are named as in the user's model, not under Fabric's wrapper
    assert {"0", "1", "2"} <= set(h[h.stat == "act_std"].layer)
    assert {"0.weight", "2.weight"} <= set(h[h.stat == "update_ratio"].layer)
