"""Mixed precision: gradients are recorded unscaled, statistics in fp32, skipped steps not counted.

The CPU tests run everywhere (bf16 autocast, and a GradScaler on CPU); the CUDA test (fp16 autocast
with a GradScaler, the configuration users actually run) runs only where a GPU is present.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nndiag import Monitor
from nndiag.demo.models import blobs, mlp


def unscaled_grad_norms(model: nn.Module) -> dict[str, float]:
    return {n: float(p.grad.detach().float().norm()) for n, p in model.named_parameters() if p.grad is not None}


def train_with_scaler(device: str, dtype: torch.dtype, steps: int = 6) -> tuple[Monitor, list[dict[str, float]]]:
    """A plain loop with autocast and a GradScaler; returns the monitor and the true (unscaled) norms per step."""
    torch.manual_seed(0)
    model = mlp(8, 3, hidden=32, depth=2).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**12)
    x, y = blobs(n=16 * steps, features=8, classes=3, seed=5)
    x, y = x.to(device), y.to(device)
    truth: list[dict[str, float]] = []
    with Monitor(model, opt, log_dir=None, schedule=1) as mon:
        for i in range(steps):
            with torch.autocast(device_type=device, dtype=dtype):
                loss = nn.functional.cross_entropy(model(x[16 * i : 16 * i + 16]), y[16 * i : 16 * i + 16])
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # the norms nndiag must report are these, not 2**12 times larger
            truth.append(unscaled_grad_norms(model))
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            mon.step(loss)
    return mon, truth


@pytest.mark.parametrize(
    ("device", "dtype"),
    [
        pytest.param("cpu", torch.bfloat16, id="cpu-bf16-autocast"),
        pytest.param(
            "cuda",
            torch.float16,
            id="cuda-fp16-gradscaler",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ),
    ],
)
def test_gradients_are_recorded_unscaled(device: str, dtype: torch.dtype) -> None:
    mon, truth = train_with_scaler(device, dtype)
    h = mon.history
    grads = h[h.stat == "grad_norm"]
    assert len(grads) == sum(len(t) for t in truth)
    for row in grads.itertuples():
        assert row.value == pytest.approx(truth[row.step][row.layer], rel=1e-5), (row.step, row.layer)
    acts = h[h.stat.isin(["act_mean", "act_std"])]
    assert len(acts) > 0 and acts.value.map(math.isfinite).all()


def test_bf16_autocast_statistics_are_fp32_on_cpu() -> None:
    """Outputs are bf16 under autocast; their moments are computed in fp32 (bf16 sums would be off by ~1%)."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 512)
    model = nn.Sequential(lin, nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(64, 256) + 3.0  # a large mean: a bf16 accumulation would lose digits
    with Monitor(model, opt, log_dir=None, schedule=1) as mon:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lin(x)
            assert out.dtype == torch.bfloat16
            loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        mon.step(loss)
    ref = out.detach().float()
    got = mon.history.set_index(["layer", "stat"]).value
    assert got[("0", "act_mean")] == pytest.approx(float(ref.mean()), rel=1e-4, abs=1e-5)
    assert got[("0", "act_std")] == pytest.approx(float(ref.std(correction=0)), rel=1e-4)
