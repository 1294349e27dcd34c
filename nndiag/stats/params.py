"""On-device norms of parameter tensors, batched with ``torch._foreach_norm``.

Example:
    >>> import torch
    >>> from nndiag.stats.params import norms
    >>> norms([torch.ones(4), torch.zeros(2)]).tolist()
    [2.0, 0.0]

"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nndiag.stats.activations import as_float


def norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of each tensor, stacked into one fp32 tensor on the first tensor's device.

    Tensors on several devices are grouped per device and the results moved to the
    first device (model-parallel models); empty input gives an empty tensor.
    """
    if not tensors:
        return torch.zeros(0)
    device = tensors[0].device
    if all(t.device == device for t in tensors):  # the usual case: one fused call, one stack
        return torch.stack(torch._foreach_norm([as_float(t) for t in tensors])).float()
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    out = torch.empty(len(tensors), device=device, dtype=torch.float32)
    for idx in by_device.values():
        group = [as_float(tensors[i]) for i in idx]
        vals = torch.stack([v.float() for v in torch._foreach_norm(group)])
        out[torch.tensor(idx, device=device)] = vals.to(device, non_blocking=True)
    return out
