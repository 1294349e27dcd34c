"""Learning-rate range test through Lightning's ``Tuner.lr_find``, with a suggested range.

Lightning does the test (the learning rate grows exponentially from ``min_lr`` to ``max_lr``
over ``num_training`` steps while the smoothed loss is recorded; it stops early once the loss
exceeds 4x its best). nndiag only prepares a throwaway ``Trainer`` (CPU or the model's device, no
logger, no checkpointing, no progress bar, ``default_root_dir`` in a temporary directory, so
Lightning's temporary ``.lr_find_*.ckpt`` never lands in your working directory) and runs it on
a deep copy of the model, so your weights are untouched.

The result:
    * ``suggestion``: Lightning's suggestion, the rate of steepest loss descent;
    * ``range`` = ``(low, high)``, a coarse search range: ``high`` is a tenth of the rate at which
      the smoothed loss is lowest (past that minimum the loss turns up, so a decade below it is the
      largest safe rate: the fast.ai "minimum / 10" rule) and ``low = high / 100`` (two decades, like
      the lecture's typical first range 1e-5 ... 1e-3), clipped to the searched rates. The first 10
      points are ignored, as Lightning's own suggestion does (its smoothed loss is biased low there).
      No range when the loss never fell by 1% below its level after those points.

A plain ``nn.Module`` is wrapped in a minimal LightningModule (``loss_fn(model(x), y)``,
Adam unless ``optimizer`` is given): the suggested rates are for that optimizer, at mini-batches of
``batch_size`` samples drawn from the given batch.

Example:
    >>> from nndiag.preflight.lr_range import suggested_range
    >>> lrs = [10.0 ** (k / 2) for k in range(-12, 1)]  # 1e-6 ... 1
    >>> losses = [2.3, 2.3, 2.3, 2.3, 2.2, 2.0, 1.6, 1.1, 0.7, 0.8, 1.2, 3.0, 9.0]
    >>> [f"{v:.0e}" for v in suggested_range(lrs, losses, skip=2)]  # (low, high, rate at the lowest loss)
    ['1e-05', '1e-03', '1e-02']
    >>> suggested_range(lrs, [2.3] * 13, skip=2) is None
    True
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nndiag.preflight.batch import model_device, split_batch

LIGHTNING_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


@dataclass(frozen=True)
class LRFindConfig:
    """Settings of the learning-rate range test (passed on to ``Tuner.lr_find``)."""

    min_lr: float = 1e-6  # below the lecture's typical 1e-5 ... 1e-3 range
    max_lr: float = 1.0  # Lightning's default upper bound
    num_training: int = 100  # Lightning's default number of steps (one rate per step)
    early_stop_threshold: float | None = 4.0  # Lightning's default: stop once the loss is 4x its best
    batch_size: int = 64  # plain models: each step trains on this many samples drawn from the batch (a
    # mini-batch test, as in training; the whole batch of 1000 samples at every step costs ~15x more)

    def __post_init__(self) -> None:
        if not (0 < self.min_lr < self.max_lr):
            raise ValueError(f"LRFindConfig needs 0 < min_lr < max_lr, got {self.min_lr!r} and {self.max_lr!r}.")
        if isinstance(self.num_training, bool) or not isinstance(self.num_training, int) or self.num_training < 10:
            raise ValueError(f"LRFindConfig.num_training must be an int >= 10, got {self.num_training!r}.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"LRFindConfig.batch_size must be a positive int, got {self.batch_size!r}.")


@dataclass(frozen=True)
class LRFindResult:
    """Outcome of the learning-rate range test.

    Attributes:
        suggestion: Lightning's suggested rate (steepest descent of the smoothed loss), or ``None``.
        low: lower end of the suggested range (see the module docstring), or ``None``.
        high: upper end of the suggested range, or ``None``.
        min_loss_lr: the rate at which the smoothed loss was lowest.
        message: the suggestion in words, or why there is none.
        lrs: the rates tried.
        losses: Lightning's smoothed loss at each rate.
    """

    suggestion: float | None
    low: float | None
    high: float | None
    min_loss_lr: float | None
    message: str
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def range(self) -> tuple[float, float] | None:
        """``(low, high)``, or ``None`` when the test gave no usable curve."""
        return None if self.low is None or self.high is None else (self.low, self.high)


def find_lr(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    config: LRFindConfig | None = None,
) -> LRFindResult:
    """Run Lightning's learning-rate range test on a copy of ``model``.

    Args:
        model: a LightningModule (its ``training_step`` and single-optimizer ``configure_optimizers``
            are used), or a plain ``nn.Module`` together with ``loss_fn``.
        data: for a LightningModule, a DataLoader or a LightningDataModule; for a plain module, one
            batch (``(x, y)``, see :mod:`nndiag.preflight.batch`; mini-batches of ``config.batch_size``
            are drawn from it) or a DataLoader yielding ``(x, y)``.
        loss_fn: ``loss_fn(model(x), y)`` for a plain module.
        optimizer: for a plain module, ``optimizer(params, lr=...)``; default ``torch.optim.Adam``.
        config: the search range and length (:class:`LRFindConfig`).

    Raises:
        ImportError: without Lightning installed.
        ValueError: for a plain module without ``loss_fn``, or a model that cannot be deep-copied.
    """
    cfg = config or LRFindConfig()
    L = _package_of(model)
    try:
        net = copy.deepcopy(model)
    except Exception as exc:
        raise ValueError(
            f"the learning-rate test runs on a copy of the model, but copy.deepcopy failed ({exc}); "
            "run Lightning's Tuner.lr_find yourself."
        ) from exc
    kwargs: dict[str, Any] = {}
    if isinstance(net, L.LightningModule):
        key = "datamodule" if isinstance(data, L.LightningDataModule) else "train_dataloaders"
        kwargs[key] = data
    else:
        if loss_fn is None:
            raise ValueError("find_lr needs loss_fn for a plain nn.Module (or pass a LightningModule).")
        net = _wrap(L, net, loss_fn, optimizer or torch.optim.Adam, cfg.min_lr)
        kwargs["train_dataloaders"] = _loader(data, cfg.num_training, cfg.batch_size)
    device = model_device(net)
    with tempfile.TemporaryDirectory(prefix="nndiag-lr-find-") as tmp, _quiet():
        trainer = L.Trainer(
            accelerator="cpu" if device.type == "cpu" else "auto",
            devices=1 if device.index is None else [device.index],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
            max_epochs=1000,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        finder = L.tuner.Tuner(trainer).lr_find(
            net,
            min_lr=cfg.min_lr,
            max_lr=cfg.max_lr,
            num_training=cfg.num_training,
            early_stop_threshold=cfg.early_stop_threshold,
            update_attr=False,
            **kwargs,
        )
        suggestion = finder.suggestion() if finder is not None else None
    return summarize(finder.results if finder is not None else {}, suggestion, cfg)


def summarize(results: dict[str, list[float]], suggestion: float | None, cfg: LRFindConfig) -> LRFindResult:
    """An :class:`LRFindResult` from Lightning's ``results`` (``lr`` and smoothed ``loss`` lists)."""
    lrs = [float(v) for v in results.get("lr", [])]
    losses = [float(v) for v in results.get("loss", [])]
    steep = float(suggestion) if suggestion is not None and math.isfinite(suggestion) else None
    said = f"Lightning suggests {steep:.2g} (steepest descent)" if steep is not None else "no suggestion"
    span = suggested_range(lrs, losses, min(SKIP_BEGIN, len(losses) // 3))
    if span is None:
        top = lrs[-1] if lrs else cfg.max_lr
        message = (
            f"{said}; the loss did not fall anywhere between {cfg.min_lr:.2g} and {top:.2g}, "
            "so there is no range: check that the model learns (the overfit check) or search more steps."
        )
        return LRFindResult(steep, None, None, None, message, lrs, losses)
    low, high, at_min = span
    low, high = max(low, cfg.min_lr), min(high, cfg.max_lr)
    message = f"{said}; search {low:.2g} ... {high:.2g} (the loss was lowest at {at_min:.2g})"
    if at_min >= lrs[-1] and lrs[-1] >= 0.99 * cfg.max_lr:
        message += f"; the loss still fell at max_lr={cfg.max_lr:g}: raise max_lr to see where it turns up"
    return LRFindResult(steep, low, high, at_min, message + ".", lrs, losses)


SKIP_BEGIN = 10  # Lightning's suggestion() skips as many points (its smoothed loss starts biased low)
MIN_DROP = 0.01  # the loss must fall 1% below its level after the skipped points for a range to exist


def suggested_range(lrs: list[float], losses: list[float], skip: int = SKIP_BEGIN) -> tuple[float, float, float] | None:
    """``(high / 100, high, lr_at_min)`` with ``high`` = the rate of the lowest loss / 10, ignoring the first ``skip``.

    ``None`` when fewer than 3 finite losses remain or the loss never fell ``MIN_DROP`` below its first kept value.
    """
    kept = [(lr, loss) for lr, loss in list(zip(lrs, losses, strict=False))[skip:] if math.isfinite(loss)]
    if len(kept) < 3:
        return None
    at_min, lowest = min(kept, key=lambda p: p[1])
    if lowest > (1.0 - MIN_DROP) * kept[0][1]:
        return None
    return at_min / 1000.0, at_min / 10.0, at_min


# -- Lightning plumbing ------------------------------------------------------------------------------


def _package_of(model: nn.Module) -> Any:
    """The Lightning package of a LightningModule, else the first one installed."""
    found = []
    for name in LIGHTNING_PACKAGES:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    if not found:
        raise ImportError("the learning-rate test uses Lightning's Tuner: pip install lightning")
    return next((pkg for pkg in found if isinstance(model, pkg.LightningModule)), found[0])


def _wrap(L: Any, net: nn.Module, loss_fn: Callable[[Any, Any], Any], optimizer: Callable[..., Any], lr: float) -> Any:
    """A minimal LightningModule training ``net`` with ``loss_fn`` and ``optimizer``."""

    class _LRFindModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = split_batch(batch)
            return loss_fn(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return optimizer(self.parameters(), lr=lr)

    return _LRFindModule()


class _Repeat(torch.utils.data.Dataset):
    """One batch, ``n`` times (the test then runs one epoch of ``n`` steps on it)."""

    def __init__(self, batch: tuple[Any, Any], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.batch


def _loader(data: Any, steps: int, batch_size: int) -> Any:
    """A DataLoader as given; else ``steps + 1`` mini-batches drawn with replacement from one batch.

    Inputs that are not one tensor with the target's leading dimension: the whole batch at every step.
    """
    if isinstance(data, torch.utils.data.DataLoader):
        return data
    x, y = split_batch(data)
    if y is None:
        raise ValueError("the learning-rate test needs targets: pass the batch as (inputs, targets).")
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dim() >= 1 and len(x) == len(y) > 0:
        dataset = torch.utils.data.TensorDataset(x, y)
        size = min(batch_size, len(x))
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=(steps + 1) * size)
        return torch.utils.data.DataLoader(dataset, batch_size=size, sampler=sampler)
    return torch.utils.data.DataLoader(_Repeat((x, y), steps + 1), batch_size=None)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the throwaway trainer: Lightning's banner, data-loader hints and the finder's own tqdm bar.

    The finder's progress bar ignores ``enable_progress_bar`` and writes to ``sys.stderr``, which is
    redirected while the test runs (exceptions still propagate).
    """
    loggers = [
        logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            with contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
