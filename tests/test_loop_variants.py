"""Training loops around the step: LR schedulers, validate/test/predict around fit, accumulation with a scheduler,
manual optimization with two schedulers.

The learning rate nndiag records for a step is the one that step's ``optimizer.step()`` used (read by the test's own
optimizer step pre-hook), the rate that goes with the step's ``update_ratio``. Step counting itself (accumulation,
several optimizers, AMP skips, validation inside fit) is covered by tests/test_step_counting.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest
import torch
from helpers import fit, lightning, loader, make_trainer, stat
from torch import nn

from nndiag import DiagnosticsCallback, Monitor, load_run
from nndiag.demo.models import blobs, mlp
from nndiag.guard import NndiagInternalWarning
from nndiag.schedule import default_schedule

ACT_STATS = {"act_mean", "act_std", "nonfinite", "dead_frac", "sat_frac"}
PARAM_STATS = {"grad_norm", "weight_norm", "update_ratio"}


class LrMismatch(AssertionError):
    """The recorded learning rate of a step is not the one its optimizer step used."""


@pytest.fixture(autouse=True)
def no_internal_warnings() -> Iterator[None]:
    """Every test here must run without any nndiag internal error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    internal = [str(w.message) for w in caught if issubclass(w.category, NndiagInternalWarning)]
    assert internal == [], f"nndiag reported internal errors: {internal}"


def lr_tracker(opt: torch.optim.Optimizer) -> list[list[float]]:
    """Every step of ``opt``: the lr of each parameter group it used (an optimizer step pre-hook, not nndiag)."""
    used: list[list[float]] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: used.append([float(g["lr"]) for g in o.param_groups]))
    return used


def recorded(h: pd.DataFrame, stat_name: str, layer: str) -> dict[int, float]:
    rows = stat(h, stat_name, layer)
    assert not rows.step.duplicated().any(), (stat_name, layer)
    return dict(zip(rows.step.tolist(), rows.value.tolist(), strict=True))


def assert_lr_follows(h: pd.DataFrame, expected: dict[int, float], layer: str = "optimizer") -> None:
    """``lr`` rows exactly at the steps of ``expected`` (a plain failure), with its values (else LrMismatch)."""
    got = recorded(h, "lr", layer)
    assert sorted(got) == sorted(expected), f"lr of {layer} recorded at steps {sorted(got)}"
    wrong = {k: (got[k], v) for k, v in expected.items() if got[k] != pytest.approx(v, rel=1e-12, abs=0.0)}
    if wrong:
        raise LrMismatch(f"{layer}: step -> (recorded, used by the step): {wrong}")


def steps_with(h: pd.DataFrame, stats: set[str]) -> list[int]:
    return sorted(h[h.stat.isin(stats)].step.unique().tolist())


def logging_steps(n: int) -> list[int]:
    return [k for k in range(n) if default_schedule(k)]


# --------------------------------------------------------------------------------------
# (a) LR schedulers
# --------------------------------------------------------------------------------------

N_PLAIN = 30  # default schedule: steps 0-20 log, 21-29 do not

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, int], Any]] = {
    "StepLR": lambda opt, n: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "OneCycleLR": lambda opt, n: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.2, 0.02], total_steps=n),
}


@pytest.mark.parametrize("scheduler", [pytest.param(s, id=s) for s in SCHEDULERS])
@pytest.mark.parametrize(
    "scheduler_first",
    [
        pytest.param(False, id="mon.step-then-scheduler.step"),
        pytest.param(True, id="scheduler.step-then-mon.step"),
    ],
)
def test_plain_loop_scheduler(scheduler: str, scheduler_first: bool) -> None:
    """Two parameter groups with their own rates; the lr of each group at every logging step."""
    torch.manual_seed(0)
    model = mlp(8, 3, hidden=16, depth=1)
    groups = [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters(), "lr": 0.01}]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    sched = SCHEDULERS[scheduler](opt, N_PLAIN)
    used = lr_tracker(opt)
    x, y = blobs(n=8 * N_PLAIN, features=8, classes=3, seed=1)
    with Monitor(model, opt, log_dir=None) as mon:
        for k in range(N_PLAIN):
            nn.functional.cross_entropy(model(x[8 * k : 8 * k + 8]), y[8 * k : 8 * k + 8]).backward()
            opt.step()
            opt.zero_grad()
            if scheduler_first:
                sched.step()
                mon.step()
            else:
                mon.step()
                sched.step()
    assert len(used) == mon.steps == N_PLAIN
    assert len({tuple(u) for u in used}) > 3, "the scheduler must change the rate"
    h = mon.history
    steps = logging_steps(N_PLAIN)
    assert steps_with(h, ACT_STATS) == steps_with(h, PARAM_STATS) == steps
    for j in range(2):
        assert_lr_follows(h, {k: used[k][j] for k in steps}, layer=f"optimizer0.group{j}")


def lr_module(pkg: str, make_scheduler: Callable[[torch.optim.Optimizer], Any], interval: str) -> Any:
    """A LightningModule whose configure_optimizers returns an optimizer and a scheduler config."""
    L = lightning(pkg)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(8, 3, hidden=16, depth=1)
            self.used: list[list[float]] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            self.used = lr_tracker(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": make_scheduler(opt), "interval": interval}}

    return Module()


LIGHTNING_SCHEDULERS = [
    pytest.param(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 2, 0.5), "step", 1, id="StepLR-per-step"),
    pytest.param(
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=12), "step", 1, id="OneCycle"
    ),
    pytest.param(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5), "epoch", 3, id="StepLR-per-epoch"),
]


@pytest.mark.parametrize(("make_scheduler", "interval", "epochs"), LIGHTNING_SCHEDULERS)
def test_lightning_scheduler(
    pkg: str, make_scheduler: Callable[..., Any], interval: str, epochs: int, tmp_path: Any
) -> None:
    torch.manual_seed(0)
    n = 12 // epochs
    x, y = blobs(n=8 * n, features=8, classes=3, seed=2)
    module = lr_module(pkg, make_scheduler, interval)
    cb = DiagnosticsCallback(schedule=1)
    trainer = fit(pkg, module, loader(x, y, 8), [cb], tmp_path, max_epochs=epochs)
    assert trainer.global_step == cb.session.step == len(module.used) == 12
    assert len({u[0] for u in module.used}) > 2, "the scheduler must change the rate"
    h = cb.history
    assert steps_with(h, ACT_STATS) == steps_with(h, PARAM_STATS) == list(range(12))
    assert_lr_follows(h, {k: module.used[k][0] for k in range(12)})


# --------------------------------------------------------------------------------------
# (b) validate / test / predict around fit
# --------------------------------------------------------------------------------------

N_LIFECYCLE = 24  # batches = optimizer steps; default schedule: 0-20 log


def lifecycle_module(pkg: str) -> Any:
    L = lightning(pkg)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.log("test_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self(batch[0])

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.05)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.9)}  # per epoch

    return Module()


def lifecycle_run(pkg: str, root: Any, around: bool) -> tuple[Any, pd.DataFrame, pd.DataFrame]:
    """Fit once; with ``around``, also validate/test/predict before and after fit and validate inside it.

    Returns the callback, its history right after fit, and its history at the end.
    """
    x, y = blobs(n=8 * N_LIFECYCLE, features=8, classes=3, seed=3)
    far = loader(x[:16] + 50.0, y[:16], 8)  # evaluation inputs far off: they would show in the input statistics
    module = lifecycle_module(pkg)
    cb = DiagnosticsCallback()
    trainer = make_trainer(
        pkg,
        root,
        [cb],
        num_sanity_val_steps=2 if around else 0,
        val_check_interval=5 if around else 1.0,
        limit_val_batches=2 if around else 0,
    )

    def evaluate() -> None:
        trainer.validate(module, far, verbose=False)
        trainer.test(module, far, verbose=False)
        trainer.predict(module, far)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
        if around:
            evaluate()
        torch.manual_seed(1)  # the same training randomness whatever ran before
        trainer.fit(module, loader(x, y, 8), far if around else None)
        after_fit = cb.history
        if around:
            evaluate()
    assert trainer.global_step == cb.session.step == N_LIFECYCLE
    return cb, after_fit, cb.history


def test_lightning_validate_test_predict_around_fit(pkg: str, tmp_path: Any) -> None:
    """Evaluation before, inside and after fit adds no statistics and shifts no step: training rows are identical."""
    ref_cb, _, ref = lifecycle_run(pkg, tmp_path / "ref", around=False)
    cb, after_fit, got = lifecycle_run(pkg, tmp_path / "around", around=True)
    key = ["step", "layer", "stat"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True), after_fit.sort_values(key).reset_index(drop=True)
    )
    val = recorded(got, "val_loss", "")
    assert sorted(val) == [4, 9, 14, 19], "validation inside fit: one val_loss after every 5th step"
    training = got[got.stat != "val_loss"].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(training, ref.sort_values(key).reset_index(drop=True))
    assert steps_with(got, ACT_STATS) == logging_steps(N_LIFECYCLE)
    assert stat(got, "act_mean", "input").value.abs().max() < 5.0
    stored = load_run(cb.log_dir).history
    assert len(stored) == len(got)
    assert sorted(stored.step.unique()) == sorted(got.step.unique())
    assert ref_cb.session.closed and cb.session.closed


# --------------------------------------------------------------------------------------
# (c) gradient accumulation with a scheduler
# --------------------------------------------------------------------------------------


def test_plain_loop_accumulation_with_scheduler() -> None:
    """Three micro-batches per step; the scheduler steps with the optimizer, before mon.step() of that micro-batch."""
    torch.manual_seed(0)
    accumulate, n_micro = 3, 3 * 8 + 2  # 8 steps, then 2 micro-batches that never step
    model = mlp(8, 3, hidden=16, depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=8, cycle_momentum=False)
    used = lr_tracker(opt)
    x, y = blobs(n=8 * n_micro, features=8, classes=3, seed=4)
    micro: list[float] = []
    with Monitor(model, opt, log_dir=None, schedule=1) as mon:
        for i in range(n_micro):
            loss = nn.functional.cross_entropy(model(x[8 * i : 8 * i + 8]), y[8 * i : 8 * i + 8])
            (loss / accumulate).backward()
            micro.append(float(loss))
            if (i + 1) % accumulate == 0:
                opt.step()
                opt.zero_grad()
                sched.step()
            mon.step(loss)
    assert mon.steps == len(used) == 8
    h = mon.history
    losses = recorded(h, "loss", "")
    assert sorted(losses) == list(range(8))
    for k in range(8):
        assert losses[k] == pytest.approx(sum(micro[3 * k : 3 * k + 3]) / 3, rel=1e-6)
    assert steps_with(h, PARAM_STATS) == list(range(8))
    assert_lr_follows(h, {k: used[k][0] for k in range(8)})


def test_lightning_accumulation_with_scheduler(pkg: str, tmp_path: Any) -> None:
    """accumulate_grad_batches=3 and a per-step OneCycle: Lightning steps the scheduler once per optimizer step."""
    torch.manual_seed(0)
    x, y = blobs(n=8 * 14, features=8, classes=3, seed=5)  # 4 full windows and a partial one: 5 steps
    module = lr_module(
        pkg, lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=5), interval="step"
    )
    cb = DiagnosticsCallback(schedule=1)
    trainer = fit(pkg, module, loader(x, y, 8), [cb], tmp_path, accumulate_grad_batches=3)
    assert trainer.global_step == cb.session.step == len(module.used) == 5
    assert len({u[0] for u in module.used}) == 5
    h = cb.history
    assert sorted(recorded(h, "loss", "")) == list(range(5))
    assert steps_with(h, ACT_STATS) == steps_with(h, PARAM_STATS) == list(range(5))
    assert_lr_follows(h, {k: module.used[k][0] for k in range(5)})


# --------------------------------------------------------------------------------------
# (d) manual optimization: two optimizers, schedulers stepped by hand
# --------------------------------------------------------------------------------------

# batch_idx % 4 -> (generator steps, discriminator steps)
PLAN = {0: (True, True), 1: (True, False), 2: (False, True), 3: (False, False)}


def make_gan(pkg: str) -> Any:
    L = lightning(pkg)

    class GAN(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
            self.disc = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
            self.used: list[list[list[float]]] = []
            self.stepped: list[tuple[bool, bool]] = []
            self.after: list[tuple[float, float]] = []  # each optimizer's lr when the batch ends

        def training_step(self, batch: Any, batch_idx: int) -> None:
            (real,) = batch
            opt_g, opt_d = self.optimizers()
            sch_g, sch_d = self.lr_schedulers()
            step_g, step_d = PLAN[batch_idx % 4]
            bce = nn.functional.binary_cross_entropy_with_logits
            ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)
            fake = self.gen(torch.randn(real.shape[0], 4))
            if step_d:
                opt_d.zero_grad()
                self.manual_backward(bce(self.disc(real), ones) + bce(self.disc(fake.detach()), zeros))
                opt_d.step()
                if batch_idx % 4 == 0:  # every second discriminator step
                    sch_d.step()
            if step_g:
                opt_g.zero_grad()
                self.manual_backward(bce(self.disc(fake), ones))
                opt_g.step()
                sch_g.step()
            self.stepped.append((step_g, step_d))
            self.after.append((opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]))

        def configure_optimizers(self) -> Any:
            opt_g = torch.optim.SGD(self.gen.parameters(), lr=0.01)
            opt_d = torch.optim.SGD(self.disc.parameters(), lr=0.02)
            self.used = [lr_tracker(opt_g), lr_tracker(opt_d)]
            return [opt_g, opt_d], [
                torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=0.9),
                torch.optim.lr_scheduler.StepLR(opt_d, step_size=1, gamma=0.5),
            ]

    return GAN()


def test_manual_optimization_two_schedulers(pkg: str, tmp_path: Any) -> None:
    """Each optimizer's lr at each step: the rate it stepped with, or (not stepped) its rate when the batch ended."""
    torch.manual_seed(0)
    real = torch.randn(12 * 8, 8) * 0.5 + 1.0  # 12 batches: 9 in which an optimizer steps
    gan = make_gan(pkg)
    cb = DiagnosticsCallback(schedule=1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(real), batch_size=8)
    fit(pkg, gan, data, [cb], tmp_path)
    windows: list[list[int]] = []  # the batches of each nndiag step (a batch where nothing stepped joins the next)
    pending: list[int] = []
    for b, (g, d) in enumerate(gan.stepped):
        pending.append(b)
        if g or d:
            windows.append(pending)
            pending = []
    assert cb.session.step == len(windows) == 9
    h = cb.history
    assert steps_with(h, PARAM_STATS) == list(range(9))
    for k_opt, name in enumerate(("optimizer0.group0", "optimizer1.group0")):
        used = iter(gan.used[k_opt])
        expected = {}
        for k, window in enumerate(windows):
            last = window[-1]
            expected[k] = next(used)[0] if gan.stepped[last][k_opt] else gan.after[last][k_opt]
        assert len(list(used)) == 0, "every step of the optimizer belongs to one nndiag step"
        assert len(set(expected.values())) > 2, "the scheduler must change the rate"
        assert_lr_follows(h, expected, layer=name)
