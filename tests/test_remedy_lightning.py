"""``DiagnosticsCallback(remedy=True)`` under both Lightning packages: lr spike rolled back, NaN batch skipped."""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from nndiag import RemedyConfig

PACKAGES = [p for p in ("lightning.pytorch", "pytorch_lightning") if importlib.util.find_spec(p.split(".")[0])]


def fit(
    package: str,
    remedy: Any,
    spike_at: int | None = None,
    nan_at: int | None = None,
    accumulate: int = 1,
    precision: str | None = None,
    epochs: int = 3,
    in_step: bool = False,
) -> tuple[Any, float]:
    """``epochs`` epochs of 64 optimizer steps (``accumulate`` micro-batches each, 32 samples per step).

    ``in_step``: wait after each batch until the writer has handled it (the advisors' checks included),
    so that on these millisecond steps the advisors are never behind and the remedy acts at the same
    steps whatever the machine's load (else a spike's state can be confirmed good before it is checked).
    """
    L = importlib.import_module(package)
    from nndiag import DiagnosticsCallback

    torch.manual_seed(0)
    w = torch.randn(8, 1)
    x = torch.randn(2048, 8)
    y = x @ w + 0.1 * torch.randn(2048, 1)
    if nan_at is not None:
        x[nan_at * 32] = float("nan")  # one sample of step ``nan_at``'s (first micro-)batch (no shuffling)

    class Module(L.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if spike_at is not None and self.global_step == spike_at and batch_idx == spike_at * accumulate:
                for g in self.optimizers().param_groups:
                    g["lr"] *= 100
            xb, yb = batch
            return nn.functional.mse_loss(self.net(xb), yb)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32 // accumulate)
    cb = DiagnosticsCallback(schedule=1, store=False, tensorboard=False, report=False, remedy=remedy)
    module = Module()

    class Drain(L.Callback):  # type: ignore[misc,name-defined]
        def on_train_batch_end(self, *args: Any) -> None:
            if in_step and cb.session is not None:
                assert cb.session.pipeline.drain(), "the writer did not catch up within 60 s"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            callbacks=[cb, Drain()],
            max_epochs=epochs,
            accumulate_grad_batches=accumulate,
            **({"precision": precision} if precision else {}),
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        trainer.fit(module, loader)
    with torch.no_grad():
        xe = torch.randn(512, 8)
        final = float(nn.functional.mse_loss(module.net(xe), xe @ w))
    return cb, final


@pytest.mark.parametrize("package", PACKAGES)
def test_lightning_lr_spike_rolled_back(package: str) -> None:
    cb, final = fit(package, RemedyConfig(keep_every=25, confirm_steps=5), in_step=True, spike_at=60)
    rollbacks = [r for r in cb.remedies if r.action == "rollback"]
    assert rollbacks and rollbacks[0].good_step <= 61, cb.remedies
    assert math.isfinite(final) and final < 0.5, final  # the initial loss is ~8; undisturbed ~0.03
    assert cb.stop_reason is None
    assert any(d.code == "remedied" for d in cb.diagnoses)


@pytest.mark.parametrize("package", PACKAGES)
def test_lightning_nan_batch_skipped(package: str) -> None:
    cb, final = fit(package, True, nan_at=40)
    # the NaN sample is in the data set: its batch comes back every epoch (64 batches), and is skipped each time
    assert [(r.action, r.step) for r in cb.remedies] == [("skip", 40), ("skip", 104), ("skip", 168)]
    assert math.isfinite(final)
    assert "nonfinite_loss" not in {d.code for d in cb.diagnoses}


ACCUMULATE_OR_BF16 = [
    pytest.param({"accumulate": 4, "epochs": 1}, id="accumulate4"),  # 256 micro-batches
    pytest.param({"precision": "bf16-mixed", "epochs": 1}, id="bf16"),  # CPU autocast; fp16 needs CUDA's GradScaler
]


@pytest.mark.parametrize("kw", ACCUMULATE_OR_BF16)
def test_lightning_accumulation_and_bf16_spike_rolled_back(kw: dict[str, Any]) -> None:
    cb, final = fit(PACKAGES[0], RemedyConfig(keep_every=10, confirm_steps=5), in_step=True, spike_at=30, **kw)
    rollbacks = [r for r in cb.remedies if r.action == "rollback"]
    assert rollbacks and rollbacks[0].good_step <= 31 and rollbacks[0].step > 30, cb.remedies
    # one epoch: ~20 steps at the cut lr after the rollback (the first loss is ~8, the spike alone gives NaN)
    assert math.isfinite(final) and final < 1.0, final
    assert cb.stop_reason is None


@pytest.mark.parametrize("kw", ACCUMULATE_OR_BF16)
def test_lightning_accumulation_and_bf16_nan_batch_skipped(kw: dict[str, Any]) -> None:
    """Accumulation: the NaN sample is in the first of the step's 4 micro-batches; its loss was given to nndiag
    before the step, and is dropped with the step (no ``nonfinite_loss``)."""
    cb, final = fit(PACKAGES[0], True, nan_at=40, **kw)
    assert [(r.action, r.step) for r in cb.remedies] == [("skip", 40), ("skip", 104), ("skip", 168)][
        : kw.get("epochs", 3)
    ]
    assert math.isfinite(final)
    assert "nonfinite_loss" not in {d.code for d in cb.diagnoses}
    h = cb.history
    assert h[h.stat == "loss"].value.notna().all()
