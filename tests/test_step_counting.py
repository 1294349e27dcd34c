"""nndiag counts optimizer steps right: accumulation, several optimizers, AMP skips, validation, schedules, resume."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from helpers import fit, lightning, loader, make_module, stat
from torch import nn

from nndiag import DiagnosticsCallback, Monitor, load_run
from nndiag.demo.models import blobs, mlp
from nndiag.guard import NndiagInternalWarning

ACT_STATS = {"act_mean", "act_std", "nonfinite", "dead_frac", "sat_frac"}
PARAM_STATS = {"grad_norm", "weight_norm", "update_ratio"}


@pytest.fixture(autouse=True)
def no_internal_warnings() -> Iterator[None]:
    """Every test here must run without any nndiag internal error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    internal = [str(w.message) for w in caught if issubclass(w.category, NndiagInternalWarning)]
    assert internal == [], f"nndiag reported internal errors: {internal}"


def recording_loss(log: list[float]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy that remembers every training (grad-enabled) loss, independently of nndiag."""

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(out, target)
        if torch.is_grad_enabled():
            log.append(float(loss.detach().float()))
        return loss

    return loss_fn


def loss_series(history: Any) -> dict[int, float]:
    s = stat(history, "loss", "")
    assert not s.step.duplicated().any(), "more than one loss value for some step"
    return dict(zip(s.step.tolist(), s.value.tolist(), strict=True))


def steps_with(history: Any, stats: set[str]) -> list[int]:
    return sorted(history[history.stat.isin(stats)].step.unique().tolist())


def assert_one_row_per_series_and_step(history: Any) -> None:
    dup = history[history.duplicated(["step", "layer", "stat"], keep=False)]
    assert dup.empty, f"statistics recorded more than once for one step:\n{dup}"


# --------------------------------------------------------------------------------------
# gradient accumulation
# --------------------------------------------------------------------------------------


def test_lightning_accumulation_one_loss_per_optimizer_step(pkg: str, tmp_path: Any) -> None:
    accumulate, batch_size = 4, 4
    x, y = blobs(n=50 * batch_size, features=8, classes=3, seed=1)  # 50 batches: 12 full windows + 2 batches
    torch.manual_seed(0)
    micro: list[float] = []
    module = make_module(pkg, mlp(8, 3, hidden=16, depth=1), recording_loss(micro))
    cb = DiagnosticsCallback(schedule=1)
    trainer = fit(pkg, module, loader(x, y, batch_size), [cb], tmp_path, accumulate_grad_batches=accumulate)

    assert len(micro) == 50
    n_steps = trainer.global_step
    assert n_steps == 13  # Lightning steps on the last, partial window too
    assert cb.session.step == n_steps
    h = cb.history
    losses = loss_series(h)
    assert sorted(losses) == list(range(n_steps)), "exactly one loss per optimizer step"
    for k in range(n_steps):
        window = micro[accumulate * k : accumulate * (k + 1)]
        assert losses[k] == pytest.approx(sum(window) / len(window), rel=1e-5), f"loss of step {k}"
    assert steps_with(h, {"grad_norm"}) == list(range(n_steps))
    assert steps_with(h, ACT_STATS) == list(range(n_steps))
    assert_one_row_per_series_and_step(h)
    stored = load_run(cb.log_dir)
    assert loss_series(stored.history) == pytest.approx(losses)


def test_plain_loop_accumulation(tmp_path: Any) -> None:
    torch.manual_seed(0)
    accumulate, n_micro = 3, 14  # 4 full windows, then 2 micro-batches that never step
    model = mlp(8, 3, hidden=16, depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = blobs(n=8 * n_micro, features=8, classes=3, seed=2)
    micro_losses: list[float] = []
    out_means: list[float] = []
    grad_norms: list[dict[str, float]] = []
    with Monitor(model, opt, log_dir=tmp_path, schedule=1) as mon:
        for i in range(n_micro):
            out = model(x[8 * i : 8 * (i + 1)])
            out_means.append(float(out.detach().mean()))
            loss = nn.functional.cross_entropy(out, y[8 * i : 8 * (i + 1)])
            micro_losses.append(float(loss.detach()))
            (loss / accumulate).backward()
            if (i + 1) % accumulate == 0:
                grad_norms.append({n: float(p.grad.norm()) for n, p in model.named_parameters()})
                opt.step()
                opt.zero_grad()
            mon.step(loss)
            assert mon.steps == (i + 1) // accumulate
    n_steps = n_micro // accumulate
    assert mon.steps == n_steps
    h = mon.history
    losses = loss_series(h)
    assert sorted(losses) == list(range(n_steps)), "micro-batches that never stepped must not make a step"
    for k in range(n_steps):
        window = micro_losses[accumulate * k : accumulate * (k + 1)]
        assert losses[k] == pytest.approx(sum(window) / accumulate, rel=1e-5)
        for name, expected in grad_norms[k].items():  # the accumulated gradient, read at optimizer.step
            got = stat(h, "grad_norm", name, k).value.tolist()
            assert got == [pytest.approx(expected, rel=1e-5)], (k, name)
        # activation statistics of a step come from one micro-batch of that step's window
        act = stat(h, "act_mean", "2", k).value.tolist()
        assert len(act) == 1
        window_means = out_means[accumulate * k : accumulate * (k + 1)]
        assert any(act[0] == pytest.approx(m, rel=1e-4, abs=1e-6) for m in window_means), (act, window_means)
    assert_one_row_per_series_and_step(h)
    assert sorted(load_run(mon.log_dir).history.step.unique().tolist()) == list(range(n_steps))


def test_lightning_training_step_outputs(pkg: str, tmp_path: Any) -> None:
    """A dict output with extra keys, and a None output (Lightning skips backward) on some batches."""
    L = lightning(pkg)
    x, y = blobs(n=8 * 8, features=8, classes=3, seed=11)
    micro: dict[int, float] = {}

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(8, 3, hidden=16, depth=1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if batch_idx in (2, 5):
                return None
            loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            micro[batch_idx] = float(loss)
            return {"loss": loss, "extra": torch.tensor(123.0)}

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    cb = DiagnosticsCallback(schedule=1)
    trainer = fit(pkg, Module(), loader(x, y, 8), [cb], tmp_path, accumulate_grad_batches=2)
    assert cb.session.step == trainer.global_step == 4
    losses = loss_series(cb.history)
    windows = [[micro[b] for b in (2 * k, 2 * k + 1) if b in micro] for k in range(4)]
    assert sorted(losses) == list(range(4))
    assert [losses[k] for k in range(4)] == pytest.approx([sum(w) / len(w) for w in windows], rel=1e-5)


# --------------------------------------------------------------------------------------
# several optimizers (manual optimization)
# --------------------------------------------------------------------------------------

# batch_idx % 4 -> (generator steps, discriminator steps)
GAN_PLAN = {0: (True, True), 1: (True, False), 2: (False, True), 3: (False, False)}


def make_gan(pkg: str) -> Any:
    L = lightning(pkg)

    class GAN(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
            self.disc = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
            self.plan: list[tuple[bool, bool]] = []
            self.grad_norms: list[dict[str, float]] = []
            self.losses: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            (real,) = batch
            opt_g, opt_d = self.optimizers()
            step_g, step_d = GAN_PLAN[batch_idx % 4]
            bce = nn.functional.binary_cross_entropy_with_logits
            ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)
            fake = self.gen(torch.randn(real.shape[0], 4))
            norms: dict[str, float] = {}
            d_loss = bce(self.disc(real), ones) + bce(self.disc(fake.detach()), zeros)
            if step_d:
                opt_d.zero_grad()
                self.manual_backward(d_loss)
                norms.update({f"disc.{n}": float(p.grad.norm()) for n, p in self.disc.named_parameters()})
                opt_d.step()
            g_loss = bce(self.disc(fake), ones)
            if step_g:
                opt_g.zero_grad()
                self.manual_backward(g_loss)
                norms.update({f"gen.{n}": float(p.grad.norm()) for n, p in self.gen.named_parameters()})
                opt_g.step()
            loss = (d_loss + g_loss).detach()
            self.plan.append((step_g, step_d))
            self.grad_norms.append(norms)
            self.losses.append(float(loss))
            return loss

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.gen.parameters(), lr=0.01), torch.optim.SGD(self.disc.parameters(), lr=0.02)]

    return GAN()


def test_manual_optimization_two_optimizers(pkg: str, tmp_path: Any) -> None:
    torch.manual_seed(0)
    real = torch.randn(14 * 8, 8) * 0.5 + 1.0  # 14 batches
    gan = make_gan(pkg)
    cb = DiagnosticsCallback(schedule=1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(real), batch_size=8)
    fit(pkg, gan, data, [cb], tmp_path)

    # a batch in which no optimizer stepped belongs to the next step (like accumulation)
    stepped, expected_losses, window = [], [], []
    for i, (step_g, step_d) in enumerate(gan.plan):
        window.append(gan.losses[i])
        if step_g or step_d:
            stepped.append((i, step_g, step_d))
            expected_losses.append(sum(window) / len(window))
            window = []
    assert len(gan.plan) == 14
    assert cb.session.step == len(stepped) == 11
    h = cb.history
    losses = loss_series(h)
    assert sorted(losses) == list(range(len(stepped)))
    assert [losses[k] for k in range(len(stepped))] == pytest.approx(expected_losses, rel=1e-6)
    gen_params = [f"gen.{n}" for n, _ in gan.gen.named_parameters()]
    disc_params = [f"disc.{n}" for n, _ in gan.disc.named_parameters()]
    for k, (i, step_g, step_d) in enumerate(stepped):
        for names, did_step in ((gen_params, step_g), (disc_params, step_d)):
            for name in names:
                ratio = stat(h, "update_ratio", name, k).value.tolist()
                assert len(ratio) == 1, (k, name)
                if did_step:
                    assert ratio[0] > 0, (k, name)
                    got = stat(h, "grad_norm", name, k).value.tolist()
                    assert got == [pytest.approx(gan.grad_norms[i][name], rel=1e-5)], (k, name)
                else:
                    assert ratio[0] == 0.0, f"{name} did not change at step {k} but update_ratio={ratio[0]}"
        assert stat(h, "lr", "optimizer0.group0", k).value.tolist() == [pytest.approx(0.01)]
        assert stat(h, "lr", "optimizer1.group0", k).value.tolist() == [pytest.approx(0.02)]
    assert set(stat(h, "grad_norm").layer) == set(gen_params + disc_params)
    assert_one_row_per_series_and_step(h)


# --------------------------------------------------------------------------------------
# mixed precision
# --------------------------------------------------------------------------------------


def test_plain_loop_amp_skipped_step_is_not_counted(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = mlp(8, 3, hidden=16, depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x, y = blobs(n=8 * 10, features=8, classes=3, seed=3)
    skip_at = 3
    stepped: list[bool] = []
    step_calls = []
    opt.register_step_post_hook(lambda *_: step_calls.append(1))
    with Monitor(model, opt, log_dir=tmp_path, schedule=1) as mon:
        for i in range(10):
            before = [p.detach().clone() for p in model.parameters()]
            loss = nn.functional.cross_entropy(model(x[8 * i : 8 * (i + 1)]), y[8 * i : 8 * (i + 1)])
            scaler.scale(loss).backward()
            if i == skip_at:
                model[0].weight.grad[0, 0] = float("inf")  # what an fp16 overflow looks like
            n_calls = len(step_calls)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            stepped.append(len(step_calls) > n_calls)
            changed = any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
            assert changed == stepped[-1]
            mon.step(loss)
    assert [i for i, s in enumerate(stepped) if not s] == [skip_at], "the GradScaler must have skipped one step"
    assert mon.steps == 9
    h = mon.history
    assert sorted(loss_series(h)) == list(range(9))
    assert steps_with(h, PARAM_STATS) == list(range(9))
    assert all(math.isfinite(v) for v in stat(h, "grad_norm").value)  # the inf gradient was never recorded
    assert sorted(load_run(mon.log_dir).history.step.unique().tolist()) == list(range(9))


def test_lightning_amp_skipped_step(pkg: str, tmp_path: Any) -> None:
    """fp16 AMP with a GradScaler on CPU: the overflow step is not counted and its loss belongs to no step."""
    L = lightning(pkg)
    torch.manual_seed(0)
    x, y = blobs(n=8 * 8, features=8, classes=3, seed=4)
    micro: list[float] = []
    module = make_module(pkg, mlp(8, 3, hidden=16, depth=1), recording_loss(micro))
    skip_batch = 2

    def on_after_backward() -> None:
        if len(micro) == skip_batch + 1:
            module.net[0].weight.grad[0, 0] = float("inf")

    module.on_after_backward = on_after_backward
    cb = DiagnosticsCallback(schedule=1)
    plugin = L.plugins.precision.MixedPrecision("16-mixed", "cpu")
    trainer = fit(pkg, module, loader(x, y, 8), [cb], tmp_path, plugins=[plugin])

    assert len(micro) == 8
    assert plugin.scaler.get_scale() < 2.0**16, "the scaler must have seen the overflow"
    assert cb.session.step == 7, f"7 optimizer steps ran (Lightning counts {trainer.global_step} incl. the skip)"
    h = cb.history
    losses = loss_series(h)
    assert sorted(losses) == list(range(7))
    expected = micro[:skip_batch] + micro[skip_batch + 1 :]  # the skipped batch's loss belongs to no step
    assert [losses[k] for k in range(7)] == pytest.approx(expected, rel=1e-5)
    assert steps_with(h, PARAM_STATS) == list(range(7))
    assert all(math.isfinite(v) for v in stat(h, "grad_norm").value)
    # the activation statistics of the step after the skip come from the batch that stepped
    batch_of_step = [b for b in range(8) if b != skip_batch]
    inputs = stat(h, "act_mean", "input").sort_values("step")
    assert inputs.step.tolist() == list(range(7))
    for k, value in zip(inputs.step, inputs.value, strict=True):
        b = batch_of_step[k]
        assert value == pytest.approx(float(x[8 * b : 8 * (b + 1)].mean()), abs=1e-5), k


def test_lightning_bf16_mixed_statistics_are_fp32(pkg: str, tmp_path: Any) -> None:
    torch.manual_seed(0)
    x, y = blobs(n=16 * 6, features=8, classes=3, seed=5)
    micro: list[float] = []
    net = mlp(8, 3, hidden=32, depth=1)
    module = make_module(pkg, net, recording_loss(micro))
    out_means: list[float] = []
    out_dtypes: set[torch.dtype] = set()

    def probe(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
        if mod.training:
            out_dtypes.add(out.dtype)
            out_means.append(float(out.detach().float().mean()))  # fp32 reduction, independent of nndiag

    net[0].register_forward_hook(probe)
    cb = DiagnosticsCallback(schedule=1)
    trainer = fit(pkg, module, loader(x, y, 16), [cb], tmp_path, precision="bf16-mixed")

    assert out_dtypes == {torch.bfloat16}, "the Linear must really have run in bf16"
    assert trainer.global_step == cb.session.step == 6
    h = cb.history
    assert sorted(loss_series(h)) == list(range(6))
    assert steps_with(h, ACT_STATS) == steps_with(h, PARAM_STATS) == list(range(6))
    assert h.value.map(math.isfinite).all(), h[~h.value.map(math.isfinite)]
    assert list(loss_series(h).values()) == pytest.approx(micro, rel=1e-5)
    # a bf16 reduction would be off by ~1e-2 relative; nndiag must reduce in fp32
    got = stat(h, "act_mean", "net.0").sort_values("step").value.tolist()
    assert got == pytest.approx(out_means, rel=1e-5, abs=1e-6)
    assert_one_row_per_series_and_step(h)


# --------------------------------------------------------------------------------------
# validation interleaved with training
# --------------------------------------------------------------------------------------


def test_lightning_validation_does_not_add_statistics(pkg: str, tmp_path: Any) -> None:
    torch.manual_seed(0)
    x, y = blobs(n=8 * 12, features=8, classes=3, seed=6)
    xv, yv = x[:32] + 50.0, y[:32]  # validation inputs are far off: they would show in the input statistics
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    module = make_module(pkg, net)
    eval_forwards: list[int] = []
    net.register_forward_hook(lambda mod, args, out: None if mod.training else eval_forwards.append(1))
    cb = DiagnosticsCallback(schedule=1)
    trainer = fit(
        pkg,
        module,
        loader(x, y, 8),
        [cb],
        tmp_path,
        val=loader(xv, yv, 8),
        val_check_interval=3,
        limit_val_batches=2,
        accumulate_grad_batches=2,
    )

    assert len(eval_forwards) == 2 * 4, "validation ran 4 times with 2 batches each"
    assert trainer.global_step == cb.session.step == 6
    h = cb.history
    assert sorted(loss_series(h)) == list(range(6))
    assert steps_with(h, ACT_STATS) == list(range(6))
    assert_one_row_per_series_and_step(h)
    # input statistics come from a training batch: the first micro-batch of each window
    inputs = stat(h, "act_mean", "input").sort_values("step")
    for step, value in zip(inputs.step, inputs.value, strict=True):
        first = x[16 * step : 16 * step + 8]
        assert value == pytest.approx(float(first.mean()), abs=1e-5), step
    assert stat(h, "act_mean", "input").value.abs().max() < 5.0


def test_plain_loop_eval_between_steps_adds_nothing() -> None:
    """In a plain loop the hooks are armed between mon.step() calls; an eval pass there must not be recorded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = blobs(n=8 * 6, features=8, classes=3, seed=7)
    train_out_means = []
    with Monitor(model, opt, log_dir=None, schedule=1) as mon:
        model.eval()
        with torch.no_grad():
            model(x[:8] + 100.0)  # evaluation before the first training batch
        for i in range(6):
            model.train()
            out = model(x[8 * i : 8 * (i + 1)])
            train_out_means.append(float(out.detach().mean()))
            nn.functional.cross_entropy(out, y[8 * i : 8 * (i + 1)]).backward()
            opt.step()
            opt.zero_grad()
            mon.step()
            model.eval()
            with torch.no_grad():
                model(x[8 * i : 8 * (i + 1)] + 100.0)
    assert mon.steps == 6
    h = mon.history
    assert steps_with(h, ACT_STATS) == list(range(6))
    assert_one_row_per_series_and_step(h)
    got = stat(h, "act_mean", "3").sort_values("step").value.tolist()
    assert got == pytest.approx(train_out_means, rel=1e-4, abs=1e-6)
    assert stat(h, "act_mean", "input").value.abs().max() < 5.0


# --------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------


def run_plain(n_steps: int, schedule: Any, **options: Any) -> tuple[Monitor, list[float], list[dict[str, float]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    losses: list[float] = []
    norms: list[dict[str, float]] = []
    with Monitor(model, opt, log_dir=None, schedule=schedule, **options) as mon:
        for _ in range(n_steps):
            x, y = torch.randn(8, 4, generator=gen), torch.randint(0, 2, (8,), generator=gen)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            norms.append({n: float(p.grad.norm()) for n, p in model.named_parameters()})
            opt.step()
            opt.zero_grad()
            mon.step(loss)
            losses.append(float(loss.detach()))
    return mon, losses, norms


@pytest.mark.parametrize(
    ("schedule", "n_steps", "expected"),
    [
        pytest.param(lambda s: s % 5 == 0, 23, [0, 5, 10, 15, 20], id="lambda-every-5th"),
        pytest.param(7, 23, [0, 7, 14, 21], id="int-every-7th"),
        pytest.param(lambda s: s in (3, 4, 11), 15, [3, 4, 11], id="lambda-sparse-set"),
        pytest.param(None, 60, [*range(20), 20, 30, 40, 50], id="default-schedule"),
    ],
)
def test_schedule_controls_statistics_not_loss(schedule: Any, n_steps: int, expected: list[int]) -> None:
    mon, losses, norms = run_plain(n_steps, schedule)
    h = mon.history
    assert mon.steps == n_steps
    assert steps_with(h, ACT_STATS) == expected
    assert steps_with(h, PARAM_STATS) == expected
    assert sorted(stat(h, "lr", "optimizer").step) == expected
    loss = loss_series(h)
    assert sorted(loss) == list(range(n_steps)), "the loss is recorded at every step"
    assert [loss[k] for k in range(n_steps)] == pytest.approx(losses, rel=1e-6)
    for k in expected:
        for name, value in norms[k].items():
            assert stat(h, "grad_norm", name, k).value.tolist() == [pytest.approx(value, rel=1e-5)]
    assert_one_row_per_series_and_step(h)


def test_sparse_schedule_bounded_loss_buffer() -> None:
    """With no logging step for long, losses are flushed in batches and none is lost or duplicated."""
    mon, losses, _ = run_plain(40, lambda s: s == 0, max_pending_losses=7)
    loss = loss_series(mon.history)
    assert sorted(loss) == list(range(40))
    assert [loss[k] for k in range(40)] == pytest.approx(losses, rel=1e-6)


def test_lightning_custom_schedule(pkg: str, tmp_path: Any) -> None:
    x, y = blobs(n=8 * 12, features=8, classes=3, seed=8)
    micro: list[float] = []
    module = make_module(pkg, mlp(8, 3, hidden=16, depth=1), recording_loss(micro))
    cb = DiagnosticsCallback(schedule=lambda s: s % 5 == 0)
    trainer = fit(pkg, module, loader(x, y, 8), [cb], tmp_path)
    h = cb.history
    assert trainer.global_step == cb.session.step == 12
    assert steps_with(h, ACT_STATS) == steps_with(h, PARAM_STATS) == [0, 5, 10]
    losses = loss_series(h)
    assert [losses[k] for k in range(12)] == pytest.approx(micro, rel=1e-6)
