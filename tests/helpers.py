"""Shared test utilities: both Lightning packages, a generic LightningModule, a fit helper."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

LIGHTNING_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def lightning(pkg: str = "lightning.pytorch") -> Any:
    """The Lightning package module (``lightning.pytorch`` or ``pytorch_lightning``)."""
    return importlib.import_module(pkg)


def make_module(
    pkg: str,
    net: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    optimizer: Callable[..., torch.optim.Optimizer] = lambda p: torch.optim.SGD(p, lr=0.05),
) -> Any:
    """A LightningModule of package ``pkg`` wrapping ``net`` (training_step calls ``self(x)``)."""
    L = lightning(pkg)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return loss_fn(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", loss_fn(self(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return optimizer(self.parameters())

    return Module()


def loader(
    x: torch.Tensor, y: torch.Tensor, batch_size: int = 32, shuffle: bool = False
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def make_trainer(pkg: str, root: Any, callbacks: list[Any], **trainer_kwargs: Any) -> Any:
    """A quiet one-epoch CPU ``Trainer`` of package ``pkg`` with a TensorBoardLogger under ``root``."""
    L = lightning(pkg)
    kwargs: dict[str, Any] = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "logger": L.loggers.TensorBoardLogger(str(root)),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    kwargs.update(trainer_kwargs)
    return L.Trainer(callbacks=callbacks, **kwargs)


def fit(
    pkg: str, module: Any, train: Any, callbacks: list[Any], root: Any, val: Any = None, **trainer_kwargs: Any
) -> Any:
    """Fit quietly on CPU with a TensorBoardLogger under ``root``; returns the trainer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
        trainer = make_trainer(pkg, root, callbacks, **trainer_kwargs)
        trainer.fit(module, train, val)
    return trainer


def stat(history: Any, stat_name: str, layer: str | None = None, step: int | None = None) -> Any:
    """Rows of ``history`` for one statistic (optionally one layer / one step)."""
    h = history[history.stat == stat_name]
    if layer is not None:
        h = h[h.layer == layer]
    if step is not None:
        h = h[h.step == step]
    return h


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """One intra-op thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    For tiny models: a second thread only contends for the test machine's cores.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
