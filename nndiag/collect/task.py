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
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

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
_MAX_NODES = 64  # the graph walk visits at most this many nodes ...
_MAX_DEPTH = 8  # ... at most this deep below the loss tensor
IGNORE_INDEX = -100  # PyTorch's default ignore_index: negative targets equal to it are padding, not classes

# -- autograd node names (torch 2.x) -----------------------------------------------------------
_BUILTIN = {
    "MseLossBackward0": "mse",
    "L1LossBackward0": "l1",  # torch 2.13 builds nn.L1Loss from abs/mean nodes instead
    "SmoothL1LossBackward0": "smooth_l1",
    "HuberLossBackward0": "huber",
    "NllLossBackward0": "nll",
    "NllLoss2DBackward0": "nll",
    "BinaryCrossEntropyBackward0": "bce",
    "BinaryCrossEntropyWithLogitsBackward0": "bce_with_logits",
    "MultiMarginLossBackward0": "multi_margin",
    "MultilabelMarginLossBackward0": "multilabel_margin",
    "SoftMarginLossBackward0": "soft_margin",
}
_REDUCTION = {0: "none", 1: "mean", 2: "sum"}  # torch's Reduction enum in ``_saved_reduction``
# nodes that only reshape, select or copy: looked through when finding the activation
_PASS = frozenset(
    {
        "ViewBackward0",
        "ReshapeAliasBackward0",
        "UnsafeViewBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "UnsqueezeBackward0",
        "SelectBackward0",
        "SliceBackward0",
        "ExpandBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "TransposeBackward1",
        "ToCopyBackward0",
        "CloneBackward0",
        "IndexBackward0",
        "ContiguousBackward0",
        "AliasBackward0",
    }
)
_ACTIVATION = {
    "SigmoidBackward0": "sigmoid",
    "SoftmaxBackward0": "softmax",
    "LogSoftmaxBackward0": "log_softmax",
    "TanhBackward0": "tanh",
    "ReluBackward0": "relu",
    "Relu6Backward0": "relu6",
    "HardtanhBackward0": "hardtanh",
    "HardsigmoidBackward0": "hardsigmoid",
    "LeakyReluBackward0": "leaky_relu",
    "EluBackward0": "elu",
    "GeluBackward0": "gelu",
    "SiluBackward0": "silu",
    "SoftplusBackward0": "softplus",
    "ExpBackward0": "exp",
    "LogBackward0": "log",
    "ClampBackward1": "clamp",
    "ClampMinBackward0": "clamp",
    "ClampMaxBackward0": "clamp",
    "AbsBackward0": "abs",
}
_REDUCE = {"MeanBackward0": "mean", "MeanBackward1": "mean", "SumBackward0": "sum", "SumBackward1": "sum"}
_SCALE = frozenset({"DivBackward0", "DivBackward1", "MulBackward0", "MulBackward1", "NegBackward0"})


@dataclass(frozen=True)
class LossKind:
    """What the autograd graph says about a loss (plain data: no reference to the graph).

    Attributes:
        kind: ``mse``, ``l1``, ``smooth_l1``, ``huber``, ``cross_entropy`` (negative log-likelihood
            of a (log-)softmax), ``nll`` (``NLLLoss`` on something that is not a log-probability),
            ``bce``, ``bce_with_logits``, a margin loss, or ``unknown``.
        reduction: ``mean``, ``sum``, ``none`` or ``unknown`` (a loss whose form was not recognised).
        scaled: the reduced loss was divided or multiplied afterwards (``sum / n`` is a mean).
        hand_written: written from tensor operations (``((y_hat - y) ** 2).mean()``) rather than a
            built-in loss (``None`` where the two give the same graph, e.g. L1 on torch 2.13).
        input_activation: the activation that produced the loss input (``sigmoid``, ``softmax``,
            ``tanh``, ``relu``, ...), ``none`` for a linear output, ``None`` when not visible. For
            cross-entropy it is what came *before* its own log-softmax (``none`` for logits).
        note: a known misuse or oddity: ``softmax_before_cross_entropy``,
            ``sigmoid_before_cross_entropy``, ``sigmoid_before_bce_with_logits``,
            ``nll_without_log``, ``log_of_softmax``, ``label_smoothing``, ``soft_targets``.
        broadcast_from: the loss input's shape when the loss broadcast it against a larger target
            (``(N, 1)`` against ``(N,)``), else ``None``.
        extra_terms: the loss node sits under a sum with other terms (a penalty, an auxiliary loss).
        node: the name of the recognised loss node (``NllLossBackward0``), ``None`` if none.
        reduced_shape: the shape of the per-element losses the nearest mean/sum above the loss node
            reduced (``None`` when no such reduction was seen): a hand-written ``((out - y) ** 2).mean()``
            with ``out`` ``[N, 1]`` and ``y`` ``[N]`` reduces ``(N, N)`` elements, which no expand node
            shows (see :func:`broadcast_confirmed`).
    """

    kind: str = "unknown"
    reduction: str = "unknown"
    scaled: bool = False
    hand_written: bool | None = None
    input_activation: str | None = None
    note: str | None = None
    broadcast_from: tuple[int, ...] | None = None
    extra_terms: bool = False
    node: str | None = None
    reduced_shape: tuple[int, ...] | None = None

    def as_facts(self) -> dict[str, Any]:
        """The fields as JSON-friendly facts (``loss_kind``, ``loss_reduction``, ...)."""
        d = asdict(self)
        return {
            "loss_kind": d["kind"],
            "loss_reduction": d["reduction"],
            "loss_scaled": d["scaled"],
            "loss_hand_written": d["hand_written"],
            "loss_input_activation": d["input_activation"],
            "loss_note": d["note"],
            "loss_broadcast_from": list(d["broadcast_from"]) if d["broadcast_from"] is not None else None,
            "loss_extra_terms": d["extra_terms"],
            "loss_node": d["node"],
            "loss_reduced_shape": list(d["reduced_shape"]) if d["reduced_shape"] is not None else None,
        }


def _name(fn: Any) -> str:
    try:
        return str(fn.name())
    except Exception:  # a custom autograd Function node without a name
        return type(fn).__name__


def _children(fn: Any) -> list[Any]:
    try:
        return [c for c, _ in fn.next_functions if c is not None]
    except Exception:
        return []


def _saved(fn: Any, attr: str) -> Any:
    """A saved non-tensor attribute of a node (``None`` when absent or freed)."""
    try:
        return getattr(fn, attr)
    except Exception:
        return None


def _below(fn: Any, limit: int = 6) -> tuple[str | None, Any, tuple[int, ...] | None]:
    """The first node under ``fn``'s input that is not a view/copy: (activation, node, expanded-from shape)."""
    kids = _children(fn)
    node = kids[0] if kids else None
    expanded: tuple[int, ...] | None = None
    for _ in range(limit):
        if node is None:
            return None, None, expanded
        name = _name(node)
        if name not in _PASS:
            return _ACTIVATION.get(name, "none"), node, expanded
        if name == "ExpandBackward0" and expanded is None:
            sizes = _saved(node, "_saved_self_sym_sizes")
            expanded = tuple(int(s) for s in sizes) if sizes is not None else None
        kids = _children(node)
        node = kids[0] if kids else None
    return None, None, expanded


def _builtin(fn: Any, path: list[str]) -> LossKind:
    """A built-in loss node ``fn`` reached through ``path`` (wrapper nodes above it)."""
    name = _name(fn)
    kind = _BUILTIN[name]
    red = _REDUCTION.get(_saved(fn, "_saved_reduction"), "unknown")
    above = [p for p in path if p in _REDUCE]
    if red == "none" and above:
        red = _REDUCE[above[0]]
    first_reduce = next((i for i, p in enumerate(path) if p in _REDUCE), len(path))
    if red == "sum" and any(p.startswith("Div") for p in path[:first_reduce]):
        red = "mean"  # sum / n (Hugging Face divides a summed loss by the number of tokens)
    scaled = any(p in ("DivBackward0", "DivBackward1", "MulBackward0", "MulBackward1") for p in path)
    act, node, expanded = _below(fn)
    note = None
    if kind == "nll":
        if act == "log_softmax":
            kind = "cross_entropy"
            act, _, _ = _below(node)  # what the log-softmax was applied to
            if act == "softmax":
                note = "softmax_before_cross_entropy"
            elif act == "sigmoid":
                note = "sigmoid_before_cross_entropy"
            elif act == "log_softmax":
                act = "none"  # log_softmax is idempotent: LogSoftmax + CrossEntropyLoss is harmless
        elif act == "log":
            inner, _, _ = _below(node)
            if inner == "softmax":
                kind, act, note = "cross_entropy", "softmax", "log_of_softmax"
        elif act == "softmax":
            note = "nll_without_log"
    elif kind == "bce_with_logits" and act == "sigmoid":
        note = "sigmoid_before_bce_with_logits"
    if "AddBackward0" in path and kind == "cross_entropy" and note is None and path.count("MulBackward1") >= 1:
        note = "label_smoothing"
    return LossKind(
        kind=kind,
        reduction=red,
        scaled=scaled,
        hand_written=False,
        input_activation=act,
        note=note,
        broadcast_from=expanded,
        extra_terms="AddBackward0" in path and note != "label_smoothing",
        node=name,
    )


def _log_term(fn: Any) -> tuple[str | None, str | None]:
    """For ``t * log(p)``-like nodes: (what the log is of, how): log_softmax/sigmoid/softmax/None."""
    for child in _children(fn):
        name = _name(child)
        if name == "LogSoftmaxBackward0":
            act, _, _ = _below(child)
            return "log_softmax", act
        if name == "LogBackward0":
            act, node, _ = _below(child)
            if act == "none" and node is not None:  # log(1 - p): the activation is under the subtraction
                act = next((_ACTIVATION[_name(g)] for g in _children(node) if _name(g) in _ACTIVATION), "none")
            return "log", act
        if name == "LogSigmoidBackward0":
            return "log", "sigmoid"
    return None, None


def _hand_written(fn: Any, path: list[str]) -> LossKind | None:
    """Hand-written squares, absolute errors and log-likelihoods under a reduction."""
    name = _name(fn)
    red = next((_REDUCE[p] for p in path if p in _REDUCE), "none")
    first_reduce = next((i for i, p in enumerate(path) if p in _REDUCE), len(path))
    if red == "sum" and any(p.startswith("Div") for p in path[:first_reduce]):
        red = "mean"  # sum / n: a mean (CrossEntropyLoss with probability targets divides by the batch)
    scaled = any(p in ("DivBackward0", "DivBackward1", "MulBackward0", "MulBackward1") for p in path)
    negated = path.count("NegBackward0") % 2 == 1
    kids = _children(fn)
    sub = [k for k in kids if _name(k) in ("SubBackward0", "RsubBackward1", "AddBackward0")]
    if name == "PowBackward0" and _saved(fn, "_saved_exponent") == 2 and sub:
        act, _, expanded = _below(sub[0])
        return LossKind("mse", red, scaled, True, act, None, expanded, "AddBackward0" in path, name)
    if name == "MulBackward0" and len(kids) == 2 and all(_name(k) == "SubBackward0" for k in kids):
        act, _, expanded = _below(kids[0])
        return LossKind("mse", red, scaled, True, act, None, expanded, "AddBackward0" in path, name)
    if name == "AbsBackward0" and sub:
        act, _, expanded = _below(sub[0])
        # torch 2.13's nn.L1Loss gives this same graph: built-in or hand-written is unknown
        return LossKind("l1", red, scaled, None, act, None, expanded, "AddBackward0" in path, name)
    if not negated or red == "none":
        return None
    if name == "LogBackward0":  # -log(softmax(x)[i, y])
        act, _, _ = _below(fn)
        if act == "softmax":
            return LossKind("cross_entropy", red, scaled, True, "softmax", "log_of_softmax", None, False, name)
        return None
    if name in ("GatherBackward0", "IndexBackward0", "SqueezeBackward1", "SqueezeBackward0"):  # -log p[y]
        of, act = _log_term(fn)
        if of == "log_softmax":
            return LossKind("cross_entropy", red, scaled, True, act, None, None, False, name)
        if of == "log" and act == "softmax":
            return LossKind("cross_entropy", red, scaled, True, "softmax", "log_of_softmax", None, False, name)
        if name.startswith("Squeeze"):
            kids = _children(fn)
            return _hand_written(kids[0], [*path, name]) if kids else None
        return None
    if name == "MulBackward0":
        of, act = _log_term(fn)
        if of == "log_softmax":
            note = "softmax_before_cross_entropy" if act == "softmax" else "soft_targets"
            # CrossEntropyLoss with probability targets builds this same graph: built-in or not is unknown
            return LossKind("cross_entropy", red, scaled, None, act, note, None, False, name)
        if of == "log" and act == "softmax":
            return LossKind("cross_entropy", red, scaled, True, "softmax", "log_of_softmax", None, False, name)
    if name == "AddBackward0":  # y * log(p) + (1 - y) * log(1 - p)
        terms = [_log_term(k) for k in kids if _name(k) == "MulBackward0"]
        if len(terms) == 2 and all(of == "log" for of, _ in terms):
            act = terms[0][1] or terms[1][1]
            return LossKind("bce", red, scaled, True, act, None, None, False, name)
    return None


def loss_kind(loss: Any) -> LossKind:
    """Name the loss from its autograd graph (``LossKind()``, i.e. ``unknown``, when unsure).

    Walks breadth-first from ``loss.grad_fn`` through reductions, scalings and sums (at most
    64 nodes, 8 levels) to the first recognised loss node; only names and saved scalar
    attributes are read, so it works after ``backward()`` as well (the saved tensors are freed
    then, the names and reductions are not). A detached loss (``loss.detach()``) has no graph.

    Args:
        loss: the loss tensor (a float, ``None`` or a detached tensor give ``unknown``).

    Returns:
        A :class:`LossKind`.

    Example:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> out = nn.Linear(3, 1)(torch.randn(5, 3))
        >>> k = loss_kind(F.mse_loss(out, torch.randn(5)))  # [5, 1] against [5]: broadcast
        >>> k.kind, k.reduction, k.broadcast_from
        ('mse', 'mean', (5, 1))
        >>> k = loss_kind(nn.BCEWithLogitsLoss()(torch.sigmoid(out).squeeze(1), torch.rand(5)))
        >>> k.kind, k.input_activation, k.note
        ('bce_with_logits', 'sigmoid', 'sigmoid_before_bce_with_logits')
        >>> loss_kind(((out.squeeze(1) - torch.randn(5)) ** 2).sum()).kind, loss_kind(2.5).kind
        ('mse', 'unknown')
    """
    fn = getattr(loss, "grad_fn", None)
    if fn is None:
        return LossKind()
    # (node, names of the nodes above it, shape reduced by the nearest mean/sum above it)
    queue: list[tuple[Any, list[str], tuple[int, ...] | None]] = [(fn, [], None)]
    seen = 0
    while queue and seen < _MAX_NODES:
        node, path, reduced = queue.pop(0)
        seen += 1
        name = _name(node)
        found = _builtin(node, path) if name in _BUILTIN else _hand_written(node, path)
        if found is not None:
            return replace(found, reduced_shape=reduced) if reduced is not None else found
        if len(path) >= _MAX_DEPTH:
            continue
        if name in _REDUCE or name in _SCALE or name in ("AddBackward0", "SubBackward0", "ToCopyBackward0"):
            if name in _REDUCE:
                sizes = _saved(node, "_saved_self_sym_sizes")
                reduced = tuple(int(x) for x in sizes) if isinstance(sizes, (tuple, list)) else reduced
            queue.extend((child, [*path, name], reduced) for child in _children(node))
    return LossKind()


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


# -- model output ------------------------------------------------------------------------------


def pick_output(output: Any, depth: int = 0) -> torch.Tensor | None:
    """The model's prediction in its output (``None`` if it has none).

    The tensor itself, ``logits`` of a dict/``ModelOutput``, else the first floating tensor with at
    least one dimension (a 0-d ``loss`` is skipped).

    Example:
        >>> import torch
        >>> pick_output({"loss": torch.tensor(0.5), "logits": torch.zeros(2, 3)}).shape
        torch.Size([2, 3])
        >>> pick_output((torch.ones(4, 1), torch.zeros(4, 8))).shape, pick_output("text")
        (torch.Size([4, 1]), None)
    """
    if depth > 3 or output is None:
        return None
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() and output.dim() > 0 else None
    if isinstance(output, Mapping):
        logits = output.get("logits")
        if isinstance(logits, torch.Tensor) and logits.is_floating_point():
            return logits
        items = [v for k, v in output.items() if k != "loss"]
    elif isinstance(output, (tuple, list)):
        items = list(output)
    else:
        fields = getattr(output, "__dataclass_fields__", None)
        if fields is None:
            return None
        logits = getattr(output, "logits", None)
        if isinstance(logits, torch.Tensor) and logits.is_floating_point():
            return logits
        items = [getattr(output, f, None) for f in fields if f != "loss"]
    for item in items:
        found = pick_output(item, depth + 1)
        if found is not None:
            return found
    return None


_OUTPUT_KEYS = ("mean", "std", "min", "max", "spread", "row_sum_one", "nonfinite")


def output_pack(out: torch.Tensor) -> torch.Tensor:
    """The reductions of a prediction tensor in one 1-D float tensor on its device.

    ``spread`` is the std across samples (dim 0) averaged over the other elements (~0 when the
    network predicts the same for every sample); ``row_sum_one`` is 1 when every value lies in
    [0, 1] and the last dimension sums to 1 (a softmax output).
    """
    with torch.no_grad():
        x = out.detach().float()
        if x.dim() == 0:
            x = x.reshape(1, 1)
        finite = torch.isfinite(x)
        z = torch.where(finite, x, torch.zeros((), device=x.device))
        n = z.shape[0]
        spread = z.std(0, correction=0).mean() if n > 1 else z.new_full((), math.nan)
        softmaxy = ((z >= 0) & (z <= 1)).all() & ((z.sum(-1) - 1).abs() < 1e-3).all()
        softmaxy = softmaxy if z.shape[-1] > 1 else torch.zeros_like(softmaxy)
        return torch.stack(
            [
                z.mean(),
                z.std(correction=0),
                z.min(),
                z.max(),
                spread,
                softmaxy.float(),
                (~finite).sum().float(),
            ]
        )


def output_finish(values: list[float], shape: tuple[int, ...]) -> dict[str, Any]:
    """Decode :func:`output_pack`'s values into the output summary (``shape`` and the keys)."""
    s: dict[str, Any] = dict(zip(_OUTPUT_KEYS, values, strict=True))
    s["row_sum_one"] = bool(s["row_sum_one"] > 0.5)
    s["nonfinite"] = int(s["nonfinite"])
    s["numel"] = math.prod(shape)
    s["rows"] = shape[0] if shape else 1
    return {"shape": list(shape), **s}


def output_summary(output: Any) -> dict[str, Any] | None:
    """Summary of the model's prediction (see :func:`pick_output`), ``None`` when there is none.

    Example:
        >>> import torch
        >>> s = output_summary({"logits": torch.tensor([[0.2, 0.8], [0.2, 0.8]])})
        >>> s["shape"], s["spread"], s["row_sum_one"]  # the same prediction for both samples
        ([2, 2], 0.0, True)
    """
    out = pick_output(output)
    if out is None or out.numel() == 0:
        return None
    return output_finish(output_pack(out).cpu().tolist(), tuple(out.shape))


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
