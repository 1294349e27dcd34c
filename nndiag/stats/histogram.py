"""On-device histograms with data-dependent edges and no host synchronisation.

``torch.histc`` needs its range as Python numbers (a host sync); here the edges are
built from on-device min/max, so the whole histogram stays on the device until
the packed transfer. Non-finite values are left out by masking (no data-dependent
shapes), so the same code runs without a sync on accelerators and inside a
``torch.compile`` graph.

Example:
    >>> import torch
    >>> from nndiag.stats.histogram import histogram
    >>> h = histogram(torch.tensor([0.0, 0.0, 1.0, 1.0]), bins=2)
    >>> h[:3].tolist(), h[3:].tolist()
    ([0.0, 0.5, 1.0], [2.0, 2.0])

"""

from __future__ import annotations

import torch


def histogram(x: torch.Tensor, bins: int = 30, max_elements: int = 1 << 20) -> torch.Tensor:
    """Edges (``bins + 1``) followed by counts (``bins``) of the finite values of ``x``.

    At most ``max_elements`` evenly strided elements are used, so the cost is bounded.
    """
    flat = x.detach().reshape(-1)
    if flat.numel() > max_elements:
        flat = flat[:: (flat.numel() + max_elements - 1) // max_elements]
    flat = flat.float()
    if flat.numel() == 0:
        return torch.zeros(2 * bins + 1, device=x.device)
    # Non-finite values are masked out rather than dropped: boolean indexing would synchronise
    # with an accelerator and break a torch.compile graph (data-dependent shape).
    finite = torch.isfinite(flat)
    any_finite = finite.any()
    lo = torch.where(finite, flat, torch.inf).amin()
    hi = torch.where(finite, flat, -torch.inf).amax()
    lo = torch.where(any_finite, lo, 0.0)
    hi = torch.where(any_finite, hi, 0.0)
    span = torch.clamp(hi - lo, min=1e-12)
    edges = torch.where(any_finite, lo + span * torch.linspace(0, 1, bins + 1, device=flat.device), 0.0)
    idx = ((torch.where(finite, flat, lo) - lo) / span * bins).long().clamp_(0, bins - 1)
    counts = torch.zeros(bins, device=flat.device).scatter_add_(0, idx, finite.float())
    return torch.cat([edges, counts])
