"""What the program asks the network to do: the loss kind, the targets, the model output.

Pure functions (tensors in, small records and dicts of floats out; no module, no step, no I/O),
for the recorder to call on logging steps and for the task rules to read:

* :func:`loss_kind` reads the loss tensor's autograd graph (a few attribute reads over a bounded
  walk; no reference to the graph is kept) and names the loss (``mse``, ``cross_entropy``, ...),
  its reduction, the activation that produced the loss input, and known misuses (softmax before
  ``CrossEntropyLoss``, sigmoid before ``BCEWithLogitsLoss``, a broadcast ``[N, 1]`` input).
* :func:`loss_target` returns the target a built-in loss saved for its backward pass (available
  before ``backward()`` only, e.g. in Lightning's ``on_before_backward``).
* :func:`target_pack` / :func:`target_finish` (and :func:`target_summary`, both in one) summarise a
  target batch with one packed on-device reduction and one host transfer.
* :func:`pick_output` / :func:`output_pack` / :func:`output_finish` (:func:`output_summary`) do the
  same for the root module's output (``logits`` of a Hugging Face ``ModelOutput``).
* :func:`baseline_loss` is the loss of the best constant prediction (the target mean, the class
  prior), and :func:`shape_mismatch` the ``[N, 1]`` against ``[N]`` broadcasting fault.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.collect.task import baseline_loss, loss_kind, target_summary
    >>> logits = nn.Linear(4, 3)(torch.randn(8, 4))
    >>> y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    >>> k = loss_kind(nn.CrossEntropyLoss()(torch.softmax(logits, 1), y))
    >>> k.kind, k.reduction, k.input_activation, k.note
    ('cross_entropy', 'mean', 'softmax', 'softmax_before_cross_entropy')
    >>> t = target_summary(y)
    >>> t["looks_like"], t["num_classes"], t["class_counts"]
    ('class_indices', 3, [3, 3, 2])
    >>> round(baseline_loss("cross_entropy", t), 4)  # entropy of the class balance, < ln 3
    1.0822
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from nndiag.collect.loss_kind import _BUILTIN, _REDUCE, _SCALE, LossKind, _children, _name, loss_kind
from nndiag.collect.task_output import output_finish, output_pack, output_summary, pick_output

__all__ = [
    "CLASS_CAP",
    "LossKind",
    "ShapeMismatch",
    "baseline_loss",
    "broadcast_confirmed",
    "loss_kind",
    "loss_target",
    "output_finish",
    "output_pack",
    "output_summary",
    "pick_output",
    "shape_mismatch",
    "target_finish",
    "target_pack",
    "target_summary",
]

CLASS_CAP = 1024  # class balance is counted for class indices below this (larger ones share a bucket)


IGNORE_INDEX = -100  # PyTorch's default ignore_index: negative targets equal to it are padding, not classes


def broadcast_confirmed(kind: LossKind, output_shape: tuple[int, ...] | list[int] | None) -> bool:
    """Whether the loss really compared broadcast shapes (the ``[N, 1]`` against ``[N]`` fault).

    A model output of ``[N, 1]`` with targets ``[N]`` is common and harmless when the loss function
    squeezes the output first, so the shapes alone prove nothing. The graph does: a built-in loss
    whose input was expanded (:attr:`LossKind.broadcast_from`), or a hand-written loss whose
    reduction averaged more elements than the model predicted (:attr:`LossKind.reduced_shape`).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> out, y = torch.randn(8, 1, requires_grad=True), torch.randn(8)
        >>> broadcast_confirmed(loss_kind(F.mse_loss(out.squeeze(1), y)), out.shape)
        False
        >>> broadcast_confirmed(loss_kind(((out - y) ** 2).mean()), out.shape)  # (8, 8) errors averaged
        True
    """
    if kind.broadcast_from is not None:
        return True
    if kind.reduced_shape is None or not output_shape or kind.kind not in ("mse", "l1"):
        return False
    return math.prod(kind.reduced_shape) > math.prod(int(s) for s in output_shape)


def loss_target(loss: Any) -> torch.Tensor | None:
    """The target tensor a built-in loss saved for backward (``None`` after ``backward()`` or if none).

    Works for ``MSELoss``, ``CrossEntropyLoss``/``NLLLoss``, ``BCELoss``, ``BCEWithLogitsLoss``,
    ``SmoothL1Loss``/``HuberLoss`` at the top of the graph (under a mean/sum/scale). The caller
    summarises it at once and drops it.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> y = torch.tensor([1, 0, 2])
        >>> loss = F.cross_entropy(torch.randn(3, 4, requires_grad=True), y)
        >>> bool(loss_target(loss).equal(y))
        True
        >>> loss.backward(); loss_target(loss) is None
        True
    """
    fn = getattr(loss, "grad_fn", None)
    for _ in range(4):
        if fn is None:
            return None
        if _name(fn) in _BUILTIN:
            try:
                t = fn._saved_target
            except Exception:  # freed by backward(), or not saved by this loss
                return None
            return t if isinstance(t, torch.Tensor) else None
        if _name(fn) not in _SCALE and _name(fn) not in _REDUCE:
            return None
        kids = _children(fn)
        fn = kids[0] if kids else None
    return None


# -- targets -----------------------------------------------------------------------------------

_TARGET_KEYS = (
    "min",
    "max",
    "mean",
    "std",
    "feature_var",  # mean over features of the variance across samples (population)
    "feature_mad",  # mean over features of the mean |y - median| across samples
    "feature_std",  # mean over features of the std across samples
    "integer_valued",  # 1 when every value is a whole number
    "in_01",  # 1 when every value lies in [0, 1]
    "binary",  # 1 when every value is 0 or 1
    "row_sum_one",  # 1 when every row sums to 1 (one-hot, or probability rows)
    "negatives",  # count of values < 0
    "ignored",  # count of values == -100 (padding in language modelling)
    "nonfinite",  # count of NaN/Inf values
)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 rows: ``[N, features]`` (a scalar is one row of one feature)."""
    f = t.detach().float()
    if f.dim() == 0:
        return f.reshape(1, 1)
    if f.numel() == 0:
        return f.reshape(0, 1)
    return f.reshape(f.shape[0], -1)


def target_pack(target: torch.Tensor, cap: int = CLASS_CAP) -> torch.Tensor:
    """All of a target batch's reductions in one 1-D float tensor on its device (no host sync).

    The layout is ``_TARGET_KEYS`` then ``cap + 2`` class-count buckets (values < 0, the classes
    ``0 .. cap - 1``, values >= ``cap``) of the rounded values, then ``cap`` column sums (2-D
    targets with at most ``cap`` columns, else zeros). :func:`target_finish` decodes it.
    """
    with torch.no_grad():
        rows = _as_rows(target)
        finite = torch.isfinite(rows)
        x = torch.where(finite, rows, torch.zeros((), device=rows.device))
        n, feats = x.shape
        col_mean = x.mean(0)
        var = ((x - col_mean) ** 2).mean(0)
        med = x.median(0).values if n > 0 else col_mean
        mad = (x - med).abs().mean(0)
        whole = x == x.round()
        nan = x.new_full((), math.nan)
        scalars = torch.stack(
            [
                x.min() if x.numel() else nan,
                x.max() if x.numel() else nan,
                x.mean(),
                x.std(correction=0),
                var.mean(),
                mad.mean(),
                var.sqrt().mean(),
                whole.all().float(),
                ((x >= 0) & (x <= 1)).all().float(),
                ((x == 0) | (x == 1)).all().float(),
                ((x.sum(1) - 1).abs() < 1e-4).all().float(),
                (x < 0).sum().float(),
                (x == IGNORE_INDEX).sum().float(),
                (~finite).sum().float(),
            ]
        )
        buckets = (x.round().clamp(-1, cap) + 1).long().reshape(-1)
        # scatter_add_, not bincount: bincount sizes its output from the maximum (a host sync on CUDA)
        counts = x.new_zeros(cap + 2).scatter_add_(0, buckets, x.new_ones(buckets.shape))
        cols = x.new_zeros(cap)
        if feats <= cap and target.dim() == 2:
            cols[:feats] = x.sum(0)
        return torch.cat([scalars, counts, cols])


def target_finish(
    values: list[float], shape: tuple[int, ...], dtype: torch.dtype, cap: int = CLASS_CAP
) -> dict[str, Any]:
    """Decode :func:`target_pack`'s values (already on the host) into the target summary.

    Returns a dict with ``dtype_kind`` (``int``/``float``/``bool``), ``shape``, the
    ``_TARGET_KEYS`` (flags as bools), ``looks_like`` (``class_indices``, ``one_hot``,
    ``multi_hot``, ``binary``, ``integer_levels`` (3-32 distinct whole numbers in [0, 64) in a
    float tensor: class indices cast to float, or counts), ``probabilities``, ``continuous`` or
    ``empty``), ``num_classes`` and ``class_counts`` (class indices up to ``cap`` classes;
    positives per column for one-/multi-hot and binary targets), ``distinct`` (distinct rounded
    values seen below ``cap``, or ``None``).
    """
    k = len(_TARGET_KEYS)
    s: dict[str, Any] = dict(zip(_TARGET_KEYS, values[:k], strict=True))
    counts = [int(c) for c in values[k : k + cap + 2]]
    cols = values[k + cap + 2 : k + 2 * cap + 2]
    for flag in ("integer_valued", "in_01", "binary", "row_sum_one"):
        s[flag] = bool(s[flag] > 0.5)
    for c in ("negatives", "ignored", "nonfinite"):
        s[c] = int(s[c])
    s["numel"] = math.prod(shape)
    s["rows"] = shape[0] if shape else 1
    kind = "bool" if dtype == torch.bool else "float" if dtype.is_floating_point or dtype.is_complex else "int"
    feats = shape[1] if len(shape) == 2 else 1
    out: dict[str, Any] = {"dtype_kind": kind, "shape": list(shape), **s}
    only_ignored_negative = s["negatives"] == s["ignored"]
    small = counts[-1] == 0  # no value at or above the cap
    out["distinct"] = sum(1 for c in counts[1:-1] if c > 0) if small else None
    looks = "continuous"
    num_classes: int | None = None
    class_counts: list[int] | None = None
    if s["numel"] == 0:
        looks = "empty"
    elif s["binary"] and feats > 1 and len(shape) == 2:
        looks = "one_hot" if s["row_sum_one"] else "multi_hot"
        num_classes = feats
        class_counts = [round(c) for c in cols[:feats]] if feats <= cap else None
    elif s["integer_valued"] and kind in ("int", "bool") and only_ignored_negative:
        looks = "class_indices"
        if small:
            num_classes = int(s["max"]) + 1 if s["max"] == s["max"] else None
            class_counts = counts[1 : 1 + num_classes] if num_classes else None
    elif (
        s["integer_valued"]
        and kind == "float"
        and s["min"] >= 0
        and s["max"] < 64
        and 3 <= (out["distinct"] or 0) <= 32
    ):
        looks = "integer_levels"  # whole numbers in a float tensor: class indices cast to float, or counts
    elif s["binary"]:
        looks = "binary"
        num_classes = 2
        class_counts = [counts[1], counts[2]]
    elif s["in_01"]:
        looks = "probabilities"
    out.update(looks_like=looks, num_classes=num_classes, class_counts=class_counts)
    return out


def target_summary(target: torch.Tensor, cap: int = CLASS_CAP) -> dict[str, Any]:
    """Summary of a target batch: one packed reduction on its device, one host transfer.

    Example:
        >>> import torch
        >>> s = target_summary(torch.tensor([[1., 0.], [0., 1.], [1., 1.]]))
        >>> s["looks_like"], s["class_counts"], s["dtype_kind"]
        ('multi_hot', [2, 2], 'float')
        >>> s = target_summary(torch.tensor([300., 150., 450.]))
        >>> s["looks_like"], s["mean"], round(s["std"], 1)
        ('continuous', 300.0, 122.5)
        >>> target_summary(torch.tensor([3, -100, 1]))["looks_like"]  # -100: ignore_index padding
        'class_indices'
    """
    packed = target_pack(target, cap)
    return target_finish(packed.cpu().tolist(), tuple(target.shape), target.dtype, cap)


# -- baselines and shapes ----------------------------------------------------------------------


def _entropy(counts: list[float]) -> float | None:
    total = float(sum(counts))
    if total <= 0:
        return None
    return -sum(c / total * math.log(c / total) for c in counts if c > 0)


def _binary_entropy(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log(p) + (1 - p) * math.log(1 - p))


def baseline_loss(kind: str, target: Mapping[str, Any] | None, delta: float = 1.0) -> float | None:
    """The loss of the best constant prediction, from a :func:`target_summary` (``None`` if unknown).

    * ``mse``: predicting each output's mean gives the targets' per-feature variance.
    * ``l1``: predicting each output's median gives the mean absolute deviation from it (exact for
      the batch: the summary measures it on the device).
    * ``smooth_l1``/``huber``: approximated from those two (``0.5 var`` when the deviations are
      within ``delta``, else ``mad - 0.5 delta``; the Huber loss is ``delta`` times smooth L1).
    * ``cross_entropy``: the class prior gives the entropy of the class balance (``ln C`` for C
      balanced classes); for one-hot rows the same from their column sums.
    * ``bce``/``bce_with_logits``: the prior gives the binary entropy of the mean target (per
      column, averaged, for multi-label targets; also right for probability targets).

    Example:
        >>> t = target_summary(torch.tensor([0., 0., 1., 1.]))
        >>> round(baseline_loss("bce", t), 4), round(baseline_loss("mse", t), 4)
        (0.6931, 0.25)
        >>> baseline_loss("unknown", t) is None
        True
    """
    if not target or target.get("numel", 0) == 0 or target.get("nonfinite", 0):
        return None
    looks = target.get("looks_like")
    if kind == "mse":
        return float(target["feature_var"])
    if kind == "l1":
        return float(target["feature_mad"])
    if kind in ("smooth_l1", "huber"):
        var, mad = float(target["feature_var"]), float(target["feature_mad"])
        approx = 0.5 * var / delta if math.sqrt(var) <= delta else mad - 0.5 * delta
        return approx * (delta if kind == "huber" else 1.0)
    counts = target.get("class_counts")
    if kind == "cross_entropy" and looks in ("class_indices", "one_hot") and counts:
        return _entropy([float(c) for c in counts])
    if kind in ("bce", "bce_with_logits") and target.get("in_01"):
        shape = target.get("shape") or []
        rows = max(int(target.get("rows", 0)), 1)
        if len(shape) == 2 and shape[1] > 1 and counts and looks in ("one_hot", "multi_hot"):
            return sum(_binary_entropy(c / rows) for c in counts) / len(counts)
        if len(shape) == 2 and shape[1] > 1:
            return None  # probability columns: only the overall mean is known
        return _binary_entropy(float(target["mean"]))
    return None


@dataclass(frozen=True)
class ShapeMismatch:
    """Output and target shapes that do not match.

    ``kind`` is ``broadcast`` (an elementwise loss compares every prediction with every target) or
    ``incompatible`` (they cannot be compared elementwise).
    """

    kind: str
    output_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    broadcast_shape: tuple[int, ...] | None


_CLASS_LOSSES = frozenset({"cross_entropy", "nll", "multi_margin"})


def shape_mismatch(
    output_shape: tuple[int, ...] | list[int],
    target_shape: tuple[int, ...] | list[int],
    kind: str | None = None,
) -> ShapeMismatch | None:
    """The ``[N, 1]`` against ``[N]`` fault: shapes an elementwise loss would broadcast.

    Class-index losses (``cross_entropy``, ``nll``) compare ``[N, C]`` (or ``[N, T, C]``,
    ``[N, C, T]``) outputs with ``[N]`` (``[N, T]``) targets by design; those are fine when the
    target drops one dimension. ``None`` when the shapes fit.

    Example:
        >>> shape_mismatch((32, 1), (32,))
        ShapeMismatch(kind='broadcast', output_shape=(32, 1), target_shape=(32,), broadcast_shape=(32, 32))
        >>> shape_mismatch((32, 10), (32,), kind="cross_entropy") is None, shape_mismatch((32,), (32,)) is None
        (True, True)
    """
    out, tgt = tuple(int(s) for s in output_shape), tuple(int(s) for s in target_shape)
    if out == tgt:
        return None
    if kind in _CLASS_LOSSES:
        if len(out) == len(tgt) + 1 and (out[:-1] == tgt or out[:1] + out[2:] == tgt):
            return None
        if out == tgt or (len(out) == len(tgt) and kind == "cross_entropy"):  # probability targets
            return None if out == tgt else ShapeMismatch("incompatible", out, tgt, None)
        return ShapeMismatch("incompatible", out, tgt, None)
    try:
        b = tuple(int(s) for s in torch.broadcast_shapes(out, tgt))
    except RuntimeError:
        return ShapeMismatch("incompatible", out, tgt, None)
    if math.prod(b) > max(math.prod(out), math.prod(tgt)):
        return ShapeMismatch("broadcast", out, tgt, b)
    if math.prod(out) == math.prod(tgt):
        return None  # [N] against [N, 1] squeezed elsewhere; same elements
    return ShapeMismatch("broadcast", out, tgt, b)
