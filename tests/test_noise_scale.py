"""The gradient noise scale (issue #14) against a brute-force reference (per-sample gradients, ``torch.func``).

At a learning rate of 0 every step draws batches (with replacement) from the same gradient distribution,
so the mean of the per-step estimates of ``|G|²`` and ``tr Σ`` must match the exact values within a few of
their standard errors: through the collector alone, a plain ``Monitor`` loop with accumulation, and
Lightning's ``accumulate_grad_batches``. The probe is checked the same way. Then B_noise grows as the loss
falls (the paper's qualitative behaviour), and the advice's wording, both ways and quiet when noisy.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import fit, lightning
from noise_reference import exact, loss_fn, model, problem
from torch import nn

import nndiag
from nndiag import Monitor
from nndiag import quantities as Q
from nndiag.collect.noise_scale import NoiseScaleCollector
from nndiag.rules import AdvisorConfig, RunView
from nndiag.rules.batch_size import batch_size_advice


def close_to(samples: Any, expected: float, sigmas: float = 4.0) -> bool:
    """Whether the mean of ``samples`` is within ``sigmas`` standard errors of ``expected``."""
    s = np.asarray(samples, dtype=float)
    se = s.std(ddof=1) / np.sqrt(len(s))
    return bool(abs(s.mean() - expected) <= sigmas * se)


@pytest.fixture(scope="module")
def reference() -> tuple[torch.Tensor, torch.Tensor, float, float]:
    x, y = problem()
    g2, trace = exact(model(), x, y)
    return x, y, g2, trace


def test_brute_force_reference_is_self_consistent(reference: Any) -> None:
    """E|G_B|² = |G|² + tr Σ / B, checked by averaging squared mean-gradient norms of random batches."""
    x, y, g2, trace = reference
    net = model()
    gen = torch.Generator().manual_seed(5)
    sq = []
    for _ in range(400):
        idx = torch.randint(0, len(x), (8,), generator=gen)
        grads = torch.autograd.grad(loss_fn(net(x[idx]), y[idx]), list(net.parameters()))
        sq.append(float(sum(g.double().square().sum() for g in grads)))
    assert close_to(sq, g2 + trace / 8)


@pytest.mark.parametrize(("micro", "k"), [pytest.param(4, 8, id="b4x8"), pytest.param(16, 2, id="b16x2")])
def test_collector_estimates_are_unbiased(reference: Any, micro: int, k: int) -> None:
    x, y, g2, trace = reference
    net = model()
    col = NoiseScaleCollector(list(net.named_parameters()))
    gen = torch.Generator().manual_seed(6)
    got: dict[str, list[float]] = {Q.GNS_GRAD_SQ: [], Q.GNS_TRACE: []}
    for _ in range(300):
        col.arm()
        for _ in range(k):
            idx = torch.randint(0, len(x), (micro,), generator=gen)
            (loss_fn(net(x[idx]), y[idx]) / k).backward()
        keys, values, extras = col.pack([p.grad.norm() for p in net.parameters()], batch_size=micro, world_size=1)
        net.zero_grad()
        rec = {s: float(v) for (_, s), v in zip(keys, values, strict=True)}
        for s in got:
            got[s].append(rec[s])
        assert dict((s, v) for _, s, v in extras) == {Q.BATCH_SIZE: micro * k, Q.GNS_SMALL_BATCH: micro}
    assert close_to(got[Q.GNS_GRAD_SQ], g2)
    assert close_to(got[Q.GNS_TRACE], trace)
    ratio = np.mean(got[Q.GNS_TRACE]) / np.mean(got[Q.GNS_GRAD_SQ])
    assert ratio == pytest.approx(trace / g2, rel=0.3)
    assert all(not p._backward_hooks for p in net.parameters()), "pack removes the hooks"


def monitor_run(x: torch.Tensor, y: torch.Tensor, steps: int, micro: int, k: int, lr: float = 0.0) -> pd.DataFrame:
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(7)
    with Monitor(net, opt, log_dir=None, schedule=1) as mon:
        for _ in range(steps):
            for m in range(k):
                idx = torch.randint(0, len(x), (micro,), generator=gen)
                loss = loss_fn(net(x[idx]), y[idx])
                (loss / k).backward()
                if m < k - 1:
                    mon.step(loss)
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    assert all(not p._backward_hooks for p in net.parameters()), "no hook left after the run"
    return mon.history


def series(h: pd.DataFrame, stat: str) -> pd.Series:
    return h[(h.stat == stat) & (h.layer == "")].set_index("step").value


def test_monitor_with_accumulation_matches_brute_force(reference: Any) -> None:
    x, y, g2, trace = reference
    h = monitor_run(x, y, steps=200, micro=4, k=4)
    assert close_to(series(h, Q.GNS_GRAD_SQ), g2)
    assert close_to(series(h, Q.GNS_TRACE), trace)
    assert set(series(h, Q.BATCH_SIZE)) == {16.0} and set(series(h, Q.GNS_SMALL_BATCH)) == {4.0}
    b = series(h, Q.GRAD_NOISE_SCALE)
    assert len(b) >= 190  # the EMA ratio, once both EMAs are positive
    assert b.iloc[-50:].mean() == pytest.approx(trace / g2, rel=0.5)  # an EMA over 20 steps: noisy


def test_single_device_without_accumulation_records_the_batch_only(reference: Any) -> None:
    x, y, _, _ = reference
    h = monitor_run(x, y, steps=5, micro=8, k=1)
    assert set(series(h, Q.BATCH_SIZE)) == {8.0}
    assert not h.stat.isin(Q.NOISE_SCALE_STATS).any()


def test_lightning_accumulate_grad_batches(reference: Any, tmp_path: Any) -> None:
    x, y, g2, trace = reference
    L = lightning("lightning.pytorch")

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return loss_fn(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    sampler = torch.utils.data.RandomSampler(
        range(len(x)), replacement=True, num_samples=4 * 4 * 160, generator=torch.Generator().manual_seed(8)
    )
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, sampler=sampler)
    cb = nndiag.DiagnosticsCallback(schedule=1)
    fit("lightning.pytorch", Module(), train, [cb], tmp_path, max_epochs=1, accumulate_grad_batches=4)
    h = cb.history
    assert len(series(h, Q.GNS_TRACE)) == 160
    assert close_to(series(h, Q.GNS_GRAD_SQ), g2)
    assert close_to(series(h, Q.GNS_TRACE), trace)
    assert set(series(h, Q.BATCH_SIZE)) == {16.0}


def test_probe_matches_brute_force_and_leaves_the_model(reference: Any) -> None:
    x, y, g2, trace = reference
    net = model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(9)
    sampler = torch.utils.data.RandomSampler(range(len(x)), replacement=True, generator=gen)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, sampler=sampler)
    probe = nndiag.batch_size_probe(net, loader, loss_fn, batches=16, chunks=4)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert (probe.batch_size, probe.small_batch, probe.batches) == (32, 8, 16)
    assert probe.seconds > 0 and np.isfinite(probe.spread)
    many = nndiag.batch_size_probe(net, _repeat(loader, 12), loss_fn, batches=12 * 16)
    assert many.trace == pytest.approx(trace, rel=0.2)
    assert many.grad_sq == pytest.approx(g2, rel=0.3)
    assert many.noise_scale == pytest.approx(trace / g2, rel=0.35)
    assert many.to_dict()["noise_scale"] == many.noise_scale


def test_probe_restores_batchnorm_statistics() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [(torch.randn(16, 4) + 3, torch.randn(16, 1)) for _ in range(3)]
    probe = nndiag.batch_size_probe(net, batches, nn.MSELoss(), batches=3, chunks=2)
    assert probe.batches == 3 and net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def _repeat(loader: Any, times: int) -> Any:
    for _ in range(times):
        yield from loader


def test_probe_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="chunks >= 2"):
        nndiag.batch_size_probe(nn.Linear(2, 1), [], nn.MSELoss(), chunks=1)
    with pytest.raises(ValueError, match="cannot be split"):
        nndiag.batch_size_probe(nn.Linear(2, 1), [(torch.randn(2, 2), torch.randn(2, 1))], nn.MSELoss())


def test_preflight_option_runs_the_probe() -> None:
    x, y = problem(n=256)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    report = nndiag.preflight(model(), (x[:64], y[:64]), loss_fn, overfit=False, noise_scale=loader)
    assert report.noise_scale is not None and report.noise_scale.batches == 8
    assert "batch size: gradient noise scale" in str(report)
    assert report.to_dict()["noise_scale"]["batch_size"] == 16


def test_noise_scale_grows_as_the_loss_falls() -> None:
    """Far from the optimum |G|² dominates (B_noise small); near it the noise does (B_noise large)."""
    x, y = problem(n=2048, noise=1.0, seed=3)
    torch.manual_seed(0)
    net = nn.Linear(x.shape[1], 1)
    with torch.no_grad():
        net.weight.mul_(0).add_(5.0)  # far from the solution
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(4)
    with Monitor(net, opt, log_dir=None, schedule=1) as mon:
        for _ in range(300):
            for m in range(4):
                idx = torch.randint(0, len(x), (8,), generator=gen)
                loss = ((net(x[idx]).squeeze(-1) - y[idx]) ** 2).mean()
                (loss / 4).backward()
                if m < 3:
                    mon.step(loss)
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    h = mon.history
    b = series(h, Q.GRAD_NOISE_SCALE)
    loss_curve = series(h, Q.LOSS)
    assert loss_curve.iloc[-20:].mean() < 0.1 * loss_curve.iloc[:5].mean()
    early, late = float(b.loc[5:25].mean()), float(b.iloc[-30:].mean())
    assert late > 5 * early, (early, late)


def history(trace: list[float], g2: list[float], batch: float) -> pd.DataFrame:
    rows = [(s, "", Q.GNS_TRACE, t) for s, t in enumerate(trace)]
    rows += [(s, "", Q.GNS_GRAD_SQ, g) for s, g in enumerate(g2)]
    rows += [(s, "", Q.BATCH_SIZE, batch) for s in range(len(trace))]
    return pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])


RNG = np.random.default_rng(0)
STEADY = list(2000 * (1 + 0.2 * RNG.standard_normal(40)))  # tr Σ estimates; |G|² = 1 with 20% noise
ONES = list(1 + 0.2 * RNG.standard_normal(40))
NOISY = list(1 + 5.0 * RNG.standard_normal(40))  # |G|² estimates whose spread is larger than their mean


@pytest.mark.parametrize(
    ("trace", "g2", "batch", "expected"),
    [
        pytest.param(STEADY, ONES, 32, "spends most of each step on noise", id="batch_far_below"),
        pytest.param(STEADY, ONES, 65536, "is far above it", id="batch_far_above"),
        pytest.param(STEADY, ONES, 1024, None, id="batch_near_noise_scale"),
        pytest.param(STEADY, NOISY, 32, None, id="too_noisy_quiet"),
        pytest.param(STEADY[:6], ONES[:6], 32, None, id="too_few_estimates"),
        pytest.param(STEADY, [-1.0] * 40, 32, None, id="negative_gradient_estimate"),
    ],
)
def test_advice_wording(trace: list[float], g2: list[float], batch: float, expected: str | None) -> None:
    out = batch_size_advice(RunView(history(trace, g2, batch)), AdvisorConfig())
    if expected is None:
        assert out == []
        return
    (d,) = out
    assert (d.code, d.severity, d.layer) == ("batch_size_advice", "info", None)
    head = r"The gradient noise scale is ~(1,9|2,0|2,1)00 samples \(±\d+, over 30 logging steps\); "
    assert re.match(head, d.message)
    assert f"your batch of {batch:,.0f} {expected}" in d.message
    assert d.evidence["noise_scale"] == pytest.approx(2000, rel=0.1)
    assert d.evidence["noise_scale_se"] < 0.5 * d.evidence["noise_scale"]


def test_advice_through_the_advisor() -> None:
    from nndiag.advisor import Advisor

    advisor = Advisor(AdvisorConfig())
    advisor.check(RunView(history(STEADY, ONES, 32)))
    assert [d.code for d in advisor.diagnoses] == ["batch_size_advice"]
