"""What a preflight batch is: the model input and (optionally) the target, on the model's device.

Accepted forms:
    * a tensor: the input only (no target: no initial-loss or overfit check);
    * a tuple or list ``(x, y, ...)``: ``x`` the input, ``y`` the target, further items ignored
      (what a ``TensorDataset`` / ``DataLoader`` yields); ``(x,)`` is input only;
    * a dict: the input under ``x``, ``input``, ``inputs``, ``input_ids``, ``pixel_values`` or
      ``features``; the target under ``y``, ``target``, ``targets``, ``label`` or ``labels``.

The model is called as ``model(x)``; the loss as ``loss_fn(model(x), y)``.

Example:
    >>> import torch
    >>> from nndiag.preflight.batch import split_batch
    >>> x, y = split_batch((torch.zeros(4, 3), torch.ones(4)))
    >>> tuple(x.shape), tuple(y.shape)
    ((4, 3), (4,))
    >>> split_batch({"inputs": torch.zeros(2, 3)})[1] is None
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

INPUT_KEYS = ("x", "input", "inputs", "input_ids", "pixel_values", "features")
TARGET_KEYS = ("y", "target", "targets", "label", "labels")


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(x, y)`` of a batch (``y`` is ``None`` when the batch holds no target); see the module docstring.

    Raises:
        ValueError: for an empty batch, a dict without an input key, or another type.
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("the batch is an empty tuple/list; pass (inputs, targets) or an input tensor.")
        return batch[0], batch[1] if len(batch) > 1 else None
    if isinstance(batch, Mapping):
        x_key = next((k for k in INPUT_KEYS if k in batch), None)
        if x_key is None:
            raise ValueError(
                f"the batch dict has keys {sorted(map(str, batch))} but none of the input keys {list(INPUT_KEYS)}; "
                "rename the input key or pass (inputs, targets)."
            )
        y_key = next((k for k in TARGET_KEYS if k in batch), None)
        return batch[x_key], batch[y_key] if y_key is not None else None
    raise ValueError(
        f"got a batch of type {type(batch).__name__}; pass an input tensor, a tuple/list (inputs, targets) or a dict."
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without tensors.

    Example:
        >>> model_device(torch.nn.Linear(2, 2)).type
        'cpu'
    """
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor (also inside tuples, lists and dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj) if not hasattr(obj, "_fields") else obj
    return obj


def first_rows(obj: Any, n: int) -> Any:
    """The first ``n`` samples of a tensor (or of each tensor in a tuple/list/dict); other objects as they are.

    Example:
        >>> first_rows(torch.arange(10), 3).tolist()
        [0, 1, 2]
    """
    return take_rows(obj, slice(None, n))


def take_rows(obj: Any, part: slice) -> Any:
    """Samples ``part`` (dim 0) of a tensor, or of each tensor in a tuple/list/dict; other objects as they are.

    Example:
        >>> take_rows({"x": torch.arange(10), "n": torch.tensor(3)}, slice(4, 6))["x"].tolist()
        [4, 5]
    """
    if isinstance(obj, torch.Tensor):
        return obj[part] if obj.dim() >= 1 else obj
    if isinstance(obj, Mapping):
        return {k: take_rows(v, part) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)) and not hasattr(obj, "_fields"):
        return type(obj)(take_rows(v, part) for v in obj)
    return obj


def batch_len(obj: Any) -> int | None:
    """Samples in ``obj``: the leading dimension of its first tensor, else ``None``.

    Example:
        >>> batch_len({"x": torch.zeros(5, 2)}), batch_len(3.0)
        (5, None)
    """
    if isinstance(obj, torch.Tensor):
        return int(obj.shape[0]) if obj.dim() >= 1 else None
    items = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    for v in items:
        n = batch_len(v)
        if n is not None:
            return n
    return None
