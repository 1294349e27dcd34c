"""Preflight at the start of a Lightning fit (what ``DiagnosticsCallback(preflight=True)`` calls).

Call :func:`preflight_at_fit_start` from ``on_train_start`` (the training dataloader is set up
by then; at ``on_fit_start`` it is not) and *before* nndiag's own recorder attaches its hooks,
so that the preflight's forward pass is not recorded as the run's step 0.

Assumptions (anything else is skipped with one info line on the ``nndiag`` logger):
    * the LightningModule's ``forward`` takes the batch input: ``pl_module(x)``;
    * the training batch is a tensor, ``(x, y, ...)`` or a dict (see :mod:`nndiag.preflight.batch`);
    * one training dataloader (not a dict/list of them).

The loss a ``training_step`` computes cannot be called safely outside the loop (it may log or use
the trainer's state), so the initial-loss and overfit checks run only with ``loss_fn``; without it
the run's own ``initial_loss_off`` rule still judges the step-0 loss.

Example:
    >>> from types import SimpleNamespace
    >>> from nndiag.preflight.lightning import preflight_at_fit_start
    >>> preflight_at_fit_start(SimpleNamespace(train_dataloader=None), object()) is None
    True
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from nndiag.log import get_logger
from nndiag.preflight.api import preflight, preserved_rng
from nndiag.preflight.batch import model_device
from nndiag.preflight.report import PreflightReport


def preflight_at_fit_start(
    trainer: Any,
    pl_module: Any,
    batch: Any = None,
    *,
    log: bool = True,
    **options: Any,
) -> PreflightReport | None:
    """Run :func:`nndiag.preflight` on the first training batch; never raises.

    Args:
        trainer: the Lightning ``Trainer`` (its ``train_dataloader`` supplies the batch).
        pl_module: the LightningModule; called as ``pl_module(x)``.
        batch: a batch to use instead of the dataloader's first one.
        log: log the report on the ``nndiag`` logger (WARNING when it is not ``ok``, else INFO).
        **options: passed on to :func:`nndiag.preflight` (``loss_fn``, ``num_classes``, ``overfit``,
            ``lr_find``, ``advisor_config``). The overfit check runs only with ``loss_fn``.

    Returns:
        The report, or ``None`` when the preflight was skipped or failed (the reason is logged at INFO).
    """
    logger = get_logger()
    try:
        if not isinstance(pl_module, nn.Module):
            logger.info("nndiag preflight skipped: the LightningModule is not an nn.Module.")
            return None
        if batch is None:
            batch, why = _first_batch(trainer, pl_module)
            if batch is None:
                logger.info("nndiag preflight skipped: %s", why)
                return None
        report = preflight(pl_module, batch, **options)
    except Exception as exc:
        logger.info("nndiag preflight skipped: %s: %s", type(exc).__name__, exc)
        return None
    if log:
        logger.log(logging.INFO if report.ok else logging.WARNING, "%s", report)
    return report


def _first_batch(trainer: Any, pl_module: nn.Module) -> tuple[Any, str]:
    """The first batch of the trainer's single training dataloader, or ``(None, reason)``.

    A fresh iterator over the dataloader is made and dropped; the RNG state is restored
    afterwards, so a shuffling sampler's order in the real epoch is unaffected.
    """
    loader = getattr(trainer, "train_dataloader", None)
    if loader is None:
        return None, "no training dataloader yet (call it from on_train_start)."
    if isinstance(loader, (dict, list, tuple)):
        return None, "several training dataloaders; pass batch= explicitly."
    with preserved_rng(model_device(pl_module)):
        try:
            batch = next(iter(loader))
        except StopIteration:
            return None, "the training dataloader is empty."
    return batch, ""
