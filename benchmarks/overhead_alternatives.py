"""What a user would pick instead of nndiag, as Lightning callbacks, for ``benchmarks/overhead.py``.

* ``NaiveMonitor``: a hand-written per-layer monitor: forward hooks on every ``Linear``/``Conv``
  that read the output's mean and std with ``.item()``, and every parameter's gradient norm with
  ``.item()`` before the optimizer step, every step, kept in Python lists.
* ``LightningGradNorm``: Lightning's own ``grad_norm`` utility logged with ``log_dict`` every step
  (the trainer then logs every step: ``log_every_n_steps=1``).
* ``WandbWatch``: ``wandb.watch(model, log="all", log_freq=1)`` in offline mode, with one
  ``wandb.log`` of the loss per step (``watch`` commits its histograms with it). Only where wandb
  is importable: ``bash benchmarks/wandb_env.sh`` installs it beside the benchmark, not into the
  project's environment.

Example (from ``benchmarks/``):
    >>> from overhead_alternatives import ALTERNATIVES
    >>> sorted(ALTERNATIVES)
    ['lightning', 'naive', 'wandb']

"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any, ClassVar

import lightning.pytorch as L
import torch
from torch import nn


class NaiveHooks:
    """Per-layer ``.item()`` statistics: the monitor people write by hand, recording while ``active``.

    Forward hooks on every ``Linear``/``Conv2d`` read the output's mean and std (training passes);
    :meth:`before_step` reads every gradient's norm. ``benchmarks/block_overhead.py`` switches it on
    and off with its blocks; :class:`NaiveMonitor` runs it at every step of a Lightning fit.
    """

    def __init__(self, model: nn.Module, active: bool = True) -> None:
        self.model, self.active = model, active
        self.rows: list[tuple[str, str, float]] = []
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in layers]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            if self.active and module.training:
                out = out.detach()
                self.rows.append((name, "mean", out.mean().item()))
                self.rows.append((name, "std", out.std().item()))

        return hook

    def before_step(self) -> None:
        """Every gradient's norm (call where gradients are final)."""
        if self.active:
            for name, p in self.model.named_parameters():
                if p.grad is not None:
                    self.rows.append((name, "grad_norm", p.grad.detach().norm().item()))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class NaiveMonitor(L.Callback):
    """:class:`NaiveHooks` at every step of a Lightning fit."""

    def __init__(self) -> None:
        self.hooks: NaiveHooks | None = None

    def on_fit_start(self, trainer: Any, pl_module: L.LightningModule) -> None:
        self.hooks = NaiveHooks(pl_module)

    def on_before_optimizer_step(self, trainer: Any, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.hooks is not None:
            self.hooks.before_step()

    def on_fit_end(self, trainer: Any, pl_module: L.LightningModule) -> None:
        if self.hooks is not None:
            self.hooks.close()


class LightningGradNorm(L.Callback):
    """``lightning.pytorch.utilities.grad_norm`` + ``log_dict`` before every optimizer step."""

    trainer_kwargs: ClassVar[dict[str, int]] = {"log_every_n_steps": 1}

    def on_before_optimizer_step(self, trainer: Any, pl_module: L.LightningModule, optimizer: Any) -> None:
        from lightning.pytorch.utilities import grad_norm

        pl_module.log_dict(grad_norm(pl_module, norm_type=2))


class WandbWatch(L.Callback):
    """``wandb.watch(model, log="all", log_freq=1)``, offline, one ``wandb.log`` per step."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.run: Any = None

    def on_fit_start(self, trainer: Any, pl_module: L.LightningModule) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(mode="offline", dir=self.directory, project="nndiag-overhead", reinit="finish_previous")
        wandb.watch(pl_module, log="all", log_freq=1)

    def on_train_batch_end(self, trainer: Any, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.run.log({"loss": float(loss)})

    def on_fit_end(self, trainer: Any, pl_module: L.LightningModule) -> None:
        with contextlib.suppress(Exception):
            import wandb

            wandb.unwatch(pl_module)
        self.run.finish()


def wandb_available() -> bool:
    """Whether ``wandb`` can be imported here (it is not a dependency of nndiag)."""
    return importlib.util.find_spec("wandb") is not None


ALTERNATIVES = {"naive": NaiveMonitor, "lightning": LightningGradNorm, "wandb": WandbWatch}
