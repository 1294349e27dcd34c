"""``NndiagCallback(remedy=True)`` under the Hugging Face Trainer: its linear LR schedule, its clipping, accumulation.

A plain ``nn.Module`` returning ``{"loss", "logits"}`` (a regression MLP: fast, nothing downloaded) trained with
the Trainer's SGD and linear schedule. The lr spike multiplies the *scheduler's* base learning rates by 100
(a one-off change of the optimizer's lr would be overwritten by the scheduler at the next step), so it lasts:
the rollback's cut must hold on top of the schedule from then on.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from helpers import one_thread  # noqa: E402, F401  (the fixture, used through pytestmark)
from transformers import Trainer, TrainingArguments  # noqa: E402

from nndiag import RemedyConfig  # noqa: E402
from nndiag.integrations.transformers import NndiagCallback  # noqa: E402

STEPS, BATCH = 240, 32
W = torch.randn(8, 1, generator=torch.Generator().manual_seed(7))


pytestmark = pytest.mark.usefixtures("one_thread")


class Data(torch.utils.data.Dataset):
    def __init__(self, n: int, nan_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ W + 0.1 * torch.randn(n, 1, generator=g)
        if nan_at is not None:
            self.x[nan_at, 0] = float("nan")

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.net(x)
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


class Spike(transformers.TrainerCallback):
    """At step ``at`` the schedule's base learning rates x100; records (step, optimizer lr, scheduled lr)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.lrs: dict[int, tuple[float, float]] = {}

    def on_step_begin(
        self, args: Any, state: Any, control: Any, optimizer: Any = None, lr_scheduler: Any = None, **kw: Any
    ):
        if state.global_step == self.at:
            lr_scheduler.base_lrs = [b * 100 for b in lr_scheduler.base_lrs]
            for g in optimizer.param_groups:
                g["lr"] *= 100

    def on_step_end(
        self, args: Any, state: Any, control: Any, optimizer: Any = None, lr_scheduler: Any = None, **kw: Any
    ):
        # the lr for the next step (nndiag's step number global_step): the optimizer's and the scheduler's
        self.lrs[state.global_step] = (optimizer.param_groups[0]["lr"], lr_scheduler.get_last_lr()[0])


def train(tmp: Path, remedy: Any, spike: int = -1, nan_at: int | None = None, clip: float = 0.0, accumulate: int = 1):
    model = Net()
    cb = NndiagCallback(schedule=1, log_dir=None, remedy=remedy)
    spiker = Spike(spike)
    args = TrainingArguments(
        output_dir=str(tmp),
        per_device_train_batch_size=BATCH // accumulate,
        gradient_accumulation_steps=accumulate,
        max_steps=STEPS,
        logging_steps=50,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="linear",
        max_grad_norm=clip,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Data(BATCH * STEPS, nan_at), callbacks=[cb, spiker])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    xe = torch.randn(512, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        final = float(nn.functional.mse_loss(model.net(xe), xe @ W))
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return cb, spiker, final, finite, trainer


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> float:
    return train(tmp_path_factory.mktemp("hf"), None)[2]


def test_hf_lr_spike_rolled_back_and_the_cut_holds_on_the_schedule(tmp_path: Path, undisturbed: float) -> None:
    assert not math.isfinite(train(tmp_path, None, spike=100)[2])  # without the remedy the spike ruins the run
    cb, spiker, final, finite, trainer = train(tmp_path, RemedyConfig(keep_every=25, confirm_steps=5), spike=100)
    rollbacks = [r for r in cb.remedies if r.action == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0].good_step <= 100 < rollbacks[0].step, cb.remedies
    assert finite and final < 2 * undisturbed, (final, undisturbed)
    assert cb.stop_reason is None and trainer.state.global_step == STEPS
    # the step used the scheduled lr times the cut; the optimizer and the scheduler keep the schedule's own values
    h = cb.history
    used = h[h.stat == "lr"].groupby("step").value.first()
    after = range(rollbacks[0].step + 1, STEPS - 1)
    assert all(spiker.lrs[s][0] == pytest.approx(spiker.lrs[s][1]) for s in after)
    assert [used[s] for s in after] == pytest.approx([0.1 * spiker.lrs[s][1] for s in after])
    assert spiker.lrs[after[0]][1] > 1.0  # the spike lasts in the schedule: only the cut holds it


@pytest.mark.parametrize("accumulate", [1, 4])
def test_hf_nan_batch_skipped_under_clipping(tmp_path: Path, undisturbed: float, accumulate: int) -> None:
    """The Trainer clips (max_grad_norm=1): a NaN norm makes every gradient NaN, the step is skipped."""
    cb, _, final, finite, _ = train(tmp_path, True, nan_at=BATCH * 150 + 3, clip=1.0, accumulate=accumulate)
    assert [r.action for r in cb.remedies] == ["skip"], cb.remedies  # the Trainer shuffles: some step, once
    assert finite and final < 1.5 * undisturbed, (final, undisturbed)
    codes = {d.code for d in cb.diagnoses}
    assert "nonfinite_loss" not in codes and "remedied" in codes
    h = cb.history
    losses = h[h.stat == "loss"]
    assert losses.value.notna().all() and cb.remedies[0].step not in set(losses.step)
