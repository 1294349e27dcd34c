"""Containment of nndiag's own errors: training never crashes because of nndiag.

Every hook body and background task runs inside :meth:`ErrorGuard.run`. The first
failure of each *site* is reported once through :mod:`warnings` with the full
traceback (enough to file a bug); a site that keeps failing is switched off after
``max_failures`` so that it cannot slow training down.

Example:
    >>> import warnings
    >>> from nndiag.guard import ErrorGuard
    >>> guard = ErrorGuard()
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     guard.run("demo", lambda: 1 / 0)
    ...     guard.run("demo", lambda: 1 / 0)
    >>> len(caught), guard.failures["demo"]
    (1, 2)

"""

from __future__ import annotations

import threading
import traceback
import warnings
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NndiagInternalWarning(RuntimeWarning):
    """An internal nndiag error was caught; training continues without the failed part."""


class ErrorGuard:
    """Run callables, containing and reporting their exceptions once per site."""

    def __init__(self, max_failures: int = 20) -> None:
        self.max_failures = max_failures
        self.failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def disabled(self, site: str) -> bool:
        """Whether ``site`` failed too often and is now skipped."""
        return self.failures.get(site, 0) >= self.max_failures

    def run(self, site: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T | None:
        """Call ``fn(*args, **kwargs)``; on error report (first time only) and return ``None``."""
        if self.disabled(site):
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.report(site, exc)
            return None

    def report(self, site: str, exc: BaseException) -> None:
        """Count a failure of ``site`` and warn the first time (and when the site is switched off)."""
        with self._lock:
            n = self.failures.get(site, 0) + 1
            self.failures[site] = n
        if n == 1:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            warnings.warn(
                f"nndiag: internal error in {site!r}; training continues without it. "
                f"Please report this at the nndiag issue tracker with the traceback below.\n{tb}",
                NndiagInternalWarning,
                stacklevel=3,
            )
        elif n == self.max_failures:
            warnings.warn(
                f"nndiag: {site!r} failed {n} times and is now switched off for this run.",
                NndiagInternalWarning,
                stacklevel=3,
            )
