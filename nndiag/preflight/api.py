"""``nndiag.preflight(model, batch, ...)``: the lecture's babysitting checks, before any training.

1. One forward pass through the untrained model: the per-layer activation table ("hidden layer
   N had mean ... and std ...") and what it reveals (collapse, saturation, dead units, init scale,
   symmetric init, sigmoid hidden layers, unnormalised input; with a loss and targets the initial
   loss against ln C).
2. Overfit one small batch with a copy of the model: can the model and the loss learn at all?
3. Optionally, Lightning's learning-rate range test, with a suggested range.

Side effects: none on the model (no hook left, weights, buffers and every module's train/eval
flag as they were; the checks that train do so on deep copies). The global RNG state (CPU, and
the model's CUDA device) is saved and restored, so dropout in the forward pass and the data
order of the checks leave your random streams where they were. Nothing is written to disk.

Example:
    >>> import torch, torch.nn as nn
    >>> import nndiag
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    >>> x, y = torch.randn(128, 20), torch.randint(0, 5, (128,))
    >>> report = nndiag.preflight(model, (x, y), nn.CrossEntropyLoss())
    >>> report.ok, report.num_classes, report.overfit.passed
    (True, 5, True)
    >>> report.table.kind.tolist()
    ['Linear', 'ReLU', 'Linear']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import pandas as pd
import torch
from torch import nn

from nndiag import quantities as Q
from nndiag.options import AdvisorConfigLike
from nndiag.options import advisor_config as resolve_advisor_config
from nndiag.preflight.batch import batch_len, model_device, split_batch, to_device
from nndiag.preflight.checks import forward_diagnoses
from nndiag.preflight.forward import forward_pass
from nndiag.preflight.loss import LossFn, classes_of, is_classification_loss
from nndiag.preflight.lr_range import LRFindConfig, LRFindResult, find_lr
from nndiag.preflight.noise_scale import NoiseScaleProbe, batch_size_probe
from nndiag.preflight.overfit import OverfitConfig, OverfitResult, check_overfit
from nndiag.preflight.report import PreflightReport
from nndiag.rules.batch_size import BatchSizeThresholds


def preflight(
    model: nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    num_classes: int | None = None,
    *,
    overfit: bool | OverfitConfig = True,
    lr_find: bool | LRFindConfig = False,
    advisor_config: AdvisorConfigLike = None,
    noise_scale: Iterable[Any] | None = None,
) -> PreflightReport:
    """Check an untrained model on one batch before training (see the module docstring).

    Args:
        model: the freshly initialised model; it is called as ``model(x)``.
        batch: a tensor (input only), a tuple/list ``(x, y, ...)`` or a dict (input under ``x``/``input``/
            ``inputs``/..., target under ``y``/``target``/``labels``/...); see :mod:`nndiag.preflight.batch`.
            Moved to the model's device. Use a typical training batch (>= 8 samples: dead units are
            judged over at least 8 samples per unit).
        loss_fn: ``loss_fn(model(x), y)``; needed for the initial-loss and overfit checks and the
            learning-rate test.
        num_classes: classes of a softmax classifier; inferred from the output's dim 1 when ``loss_fn``
            is cross-entropy or NLL and the targets are class indices.
        overfit: run the overfit-one-batch check (default; needs ``loss_fn`` and targets), or its settings.
        lr_find: run Lightning's learning-rate range test on a copy of the model (needs Lightning,
            ``loss_fn`` and targets; a few seconds), or its settings.
        advisor_config: rule thresholds (an :class:`~nndiag.AdvisorConfig`, a dict or a TOML/JSON path).
        noise_scale: a loader (any iterable of batches): measure the gradient noise scale on its first
            8 batches with :func:`~nndiag.batch_size_probe` (needs ``loss_fn``; about 8 training steps).

    Raises:
        TypeError: when ``model`` is not an ``nn.Module``.
        ValueError: for a batch in an unknown form, an invalid ``num_classes``, or a forward pass /
            loss function that fails on the batch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"preflight expects an nn.Module as model, got {type(model).__name__}.")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an int >= 2 (the classes of a softmax classifier), got {num_classes!r}.")
    cfg = resolve_advisor_config(advisor_config)
    device = model_device(model)
    x, y = (to_device(part, device) for part in split_batch(batch))
    notes: list[str] = []
    with preserved_rng(device):
        fwd = forward_pass(model, x, y, loss_fn if y is not None else None)
        classification = is_classification_loss(loss_fn) and y is not None
        classes = num_classes if num_classes is not None else classes_of(fwd.output, y) if classification else None
        facts = fwd.facts
        if classes is not None:
            facts = replace(facts, num_classes=classes)
        diagnoses = forward_diagnoses(fwd.history, facts, cfg)
        trainable = loss_fn is not None and y is not None
        if loss_fn is None or y is None:
            notes.append(
                "initial-loss and overfit checks skipped: pass loss_fn and a batch with targets (inputs, targets)."
            )
        overfit_result: OverfitResult | None = None
        if overfit is not False and trainable:
            assert loss_fn is not None
            settings = overfit if isinstance(overfit, OverfitConfig) else OverfitConfig()
            overfit_result = check_overfit(model, x, y, loss_fn, settings, classification)
        lr_result: LRFindResult | None = None
        if lr_find is not False:
            if trainable:
                settings_lr = lr_find if isinstance(lr_find, LRFindConfig) else LRFindConfig()
                lr_result = find_lr(model, (x, y), loss_fn=loss_fn, config=settings_lr)
            else:
                notes.append("learning-rate test skipped: it needs loss_fn and a batch with targets.")
    probe: NoiseScaleProbe | None = None
    if noise_scale is not None:
        if loss_fn is None:
            notes.append("batch-size probe skipped: it needs loss_fn.")
        else:
            probe = batch_size_probe(model, noise_scale, loss_fn, thresholds=cfg.thresholds(BatchSizeThresholds))
    mean, std = _input_stats(fwd.history)
    return PreflightReport(
        table=fwd.table,
        diagnoses=diagnoses,
        samples=batch_len(x),
        input_mean=mean,
        input_std=std,
        initial_loss=fwd.loss,
        num_classes=classes,
        overfit=overfit_result,
        lr_find=lr_result,
        notes=notes,
        model_class=type(model).__name__,
        noise_scale=probe,
    )


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Restore the CPU RNG (and the CUDA RNG of ``device``) afterwards.

    Example:
        >>> _ = torch.manual_seed(1); expected = torch.rand(1)
        >>> _ = torch.manual_seed(1)
        >>> with preserved_rng(torch.device("cpu")):
        ...     _ = torch.rand(100)
        >>> bool(torch.rand(1) == expected)
        True
    """
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        yield


def _input_stats(history: pd.DataFrame) -> tuple[float | None, float | None]:
    """Mean and std of the model input (``None`` when not recorded, e.g. integer token ids)."""
    rows = history[history.layer == Q.INPUT_LAYER]
    values = {str(s): float(v) for s, v in zip(rows.stat, rows.value, strict=True)}
    return values.get(Q.ACT_MEAN), values.get(Q.ACT_STD)
