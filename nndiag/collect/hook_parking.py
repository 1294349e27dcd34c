"""Take registered module hooks off between logging steps and put them back where they were.

A module with any forward hook leaves torch's fast call path (``Module._call_impl`` runs its hook
machinery for every call), even when the hook returns at once: measured +0.06 ms on a 5.4 ms MLP
forward and +0.8 ms on a 32.7 ms 4-layer GPT-2 forward (docs/benchmarks.md, stop 26). Parking the
hooks on non-logging steps gives those steps the module calls of a model without nndiag.

Putting a hook back keeps its place among the module's other hooks: hooks that ran before it still
do, and hooks registered while it was parked run where they would have had it stayed (appended
ones after it, ``prepend=True`` ones before it).
Parking is refused (:attr:`HookParking.supported` is False) where torch keeps hooks in anything
other than an ``OrderedDict``; the hooks then simply stay registered.

Example:
    >>> import torch, torch.nn as nn
    >>> lin = nn.Linear(2, 2)
    >>> seen = []
    >>> first = lin.register_forward_hook(lambda m, a, o: seen.append("nndiag"))
    >>> user = lin.register_forward_hook(lambda m, a, o: seen.append("user"))
    >>> parking = HookParking([first])
    >>> parking.park(); len(lin._forward_hooks)
    1
    >>> parking.restore(); _ = lin(torch.zeros(1, 2)); seen
    ['nndiag', 'user']

"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch.utils.hooks import RemovableHandle


@dataclass
class _Parked:
    """One hook off its module: enough to put it back in its place."""

    hooks: OrderedDict[int, Any]
    key: int
    fn: Any
    ahead: frozenset[int]  # keys of the hooks that ran before it
    behind: frozenset[int]  # keys of the hooks that ran after it
    extras: list[tuple[dict[int, Any], Any]] = field(default_factory=list)  # with_kwargs / always_called flags


class HookParking:
    """Parks and restores a fixed set of hooks given by their handles (cheap when there is nothing to do)."""

    def __init__(self, handles: Iterable[RemovableHandle]) -> None:
        self.handles = list(handles)
        self.supported = all(isinstance(h.hooks_dict_ref(), OrderedDict) for h in self.handles)
        self.parked: list[_Parked] = []

    @property
    def is_parked(self) -> bool:
        return bool(self.parked)

    def park(self) -> None:
        """Take every hook still registered off its module (no-op if already parked or unsupported)."""
        if self.parked or not self.supported:
            return
        for h in self.handles:
            hooks = h.hooks_dict_ref()
            if hooks is None or h.id not in hooks:
                continue  # removed by someone else (or the module is gone): stays removed
            keys = list(hooks)
            at = keys.index(h.id)
            entry = _Parked(hooks, h.id, hooks.pop(h.id), frozenset(keys[:at]), frozenset(keys[at + 1 :]))
            for ref in h.extra_dict_ref:
                extra = ref()
                if extra is not None and h.id in extra:
                    entry.extras.append((extra, extra.pop(h.id)))
            self.parked.append(entry)

    def restore(self) -> None:
        """Put every parked hook back in its place among the module's hooks."""
        parked, self.parked = self.parked, []
        for p in parked:
            follow = _followers(list(p.hooks), p.ahead, p.behind)
            p.hooks[p.key] = p.fn
            for k in follow:
                p.hooks.move_to_end(k)
            for extra, value in p.extras:
                extra[p.key] = value


def _followers(keys: list[int], ahead: frozenset[int], behind: frozenset[int]) -> list[int]:
    """The keys that must run after a hook put back: from the first that ran after it on.

    Where none of those is left, from just after the last that ran before it (hooks appended while
    it was parked follow it); where neither is left, none (it goes last).

    Example:
        >>> _followers([9, 1, 2, 8], ahead=frozenset({1}), behind=frozenset({2}))  # 9 prepended, 8 appended
        [2, 8]
        >>> _followers([1, 8], ahead=frozenset({1}), behind=frozenset())
        [8]
    """
    for i, k in enumerate(keys):
        if k in behind:
            return keys[i:]
    last_ahead = max((i for i, k in enumerate(keys) if k in ahead), default=len(keys) - 1)
    return keys[last_ahead + 1 :]
