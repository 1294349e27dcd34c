"""The loss kind, read from the loss tensor's autograd graph (no reference to the graph is kept).

:func:`loss_kind` walks ``loss.grad_fn`` and its ``next_functions`` a few levels (at most 64 nodes,
8 levels) and names the loss (``mse``, ``cross_entropy``, ...), its reduction, the activation that
produced the loss input, and known misuses (softmax before ``CrossEntropyLoss``, sigmoid before
``BCEWithLogitsLoss``, a broadcast ``[N, 1]`` input). Only node names and saved scalar attributes
are read, so it works after ``backward()`` too. Used on logging steps by the task probe.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.collect.loss_kind import loss_kind
    >>> logits = nn.Linear(4, 3)(torch.randn(8, 4))
    >>> y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    >>> k = loss_kind(nn.CrossEntropyLoss()(torch.softmax(logits, 1), y))
    >>> k.kind, k.reduction, k.input_activation, k.note
    ('cross_entropy', 'mean', 'softmax', 'softmax_before_cross_entropy')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

_MAX_NODES = 64  # the graph walk visits at most this many nodes ...


_MAX_DEPTH = 8  # ... at most this deep below the loss tensor


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
