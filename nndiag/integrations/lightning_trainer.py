"""What the Lightning callback reads from a ``Trainer``: the Callback bases, the logger, the user's loss.

Example:
    >>> loss_of({"loss": 2.0}), loss_of(None)
    (2.0, None)
"""

from __future__ import annotations

import importlib
from typing import Any

from nndiag import quantities as Q

# Names under which LightningModules usually log their validation loss (first found is used).
VAL_LOSS_KEYS = (Q.VAL_LOSS, "val/loss", "valid_loss", "validation_loss", "val_loss_epoch", "loss/val")


def callback_bases() -> tuple[type, ...]:
    """The ``Callback`` base class of every installed Lightning package (an ``ImportError`` without any)."""
    bases = []
    for mod in ("lightning.pytorch", "pytorch_lightning"):
        try:
            bases.append(importlib.import_module(mod).Callback)
        except ImportError:
            continue
    if not bases:
        raise ImportError(
            "DiagnosticsCallback needs Lightning: pip install lightning (or pytorch-lightning). "
            "For plain PyTorch loops use nndiag.Monitor."
        )
    return tuple(bases)


def framework_of(trainer: Any) -> str:
    """The package of the trainer (``lightning`` or ``pytorch_lightning``)."""
    return type(trainer).__module__.split(".")[0]


def tensorboard_writer(trainer: Any) -> Any:
    """The SummaryWriter of the trainer's first TensorBoard logger, if any."""
    for logger in getattr(trainer, "loggers", []) or []:
        if "TensorBoard" in type(logger).__name__:
            exp = logger.experiment
            if hasattr(exp, "add_scalar"):
                return exp
    return None


def loss_of(outputs: Any) -> Any:
    """The loss in what ``training_step`` returned (a tensor, or a dict's ``"loss"``), else ``None``."""
    if outputs is None:
        return None
    if isinstance(outputs, dict):
        return outputs.get("loss")
    if hasattr(outputs, "detach"):
        return outputs
    return None


def user_loss(trainer: Any, pl_module: Any, outputs: Any) -> Any:
    """The loss ``training_step`` returned.

    Under automatic optimization Lightning hands ``on_train_batch_end`` the loss divided by
    ``accumulate_grad_batches`` (the value it back-propagates); undo that so the recorded loss
    is the user's loss, averaged over the batches of each optimizer step.
    """
    loss = loss_of(outputs)
    accumulate = getattr(trainer, "accumulate_grad_batches", 1)
    if (
        loss is not None
        and getattr(pl_module, "automatic_optimization", True)
        and isinstance(accumulate, int)
        and accumulate > 1
    ):
        loss = loss * accumulate
    return loss
