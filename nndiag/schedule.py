"""Which optimizer steps are logging steps.

The default schedule is dense while initialisation problems show and sparse later:

* every step for steps 0-19,
* every 10th step for steps 20-199,
* every 50th step from step 200 on.

The loss is recorded at every step whatever the schedule (kept on the device and
transferred with the next logging step).

Example:
    >>> from nndiag.schedule import resolve_schedule
    >>> s = resolve_schedule(None)
    >>> [k for k in range(60) if s(k)]
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 30, 40, 50]
    >>> every3 = resolve_schedule(3)
    >>> [k for k in range(10) if every3(k)]
    [0, 3, 6, 9]

"""

from __future__ import annotations

from collections.abc import Callable

Schedule = int | Callable[[int], bool] | None

DENSE_STEPS = 20  # every step is logged before this one (init problems show early)
MIDDLE_END, MIDDLE_EVERY = 200, 10  # then every 10th step until step 200
LATE_EVERY = 50  # then every 50th step


def default_schedule(step: int) -> bool:
    """The built-in schedule (see the module docstring)."""
    if step < DENSE_STEPS:
        return True
    if step < MIDDLE_END:
        return step % MIDDLE_EVERY == 0
    return step % LATE_EVERY == 0


class _Every:
    """Every ``n``-th step, starting at step 0 (a picklable callable)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, step: int) -> bool:
        return step % self.n == 0

    def __repr__(self) -> str:
        return f"every {self.n} step(s)"


def is_full_step(step: int, last_full: int | None, full_every: int) -> bool:
    """Whether a logging step records everything (update ratios, weight norms, output statistics).

    Every logging step up to step 20 (the dense start and the default schedule's first sparse step)
    is full; after it, one at least ``full_every`` steps after the last full one (``last_full``;
    ``None``: none yet, e.g. just resumed). It depends on the step count only, so every rank of a
    distributed run agrees, and the default schedule (never denser than every 10th step after step
    20) has full logging steps only.

    Example:
        >>> last, full = None, []
        >>> for step in range(18, 30):
        ...     if is_full_step(step, last, 4):
        ...         last = step
        ...         full.append(step)
        >>> full
        [18, 19, 20, 24, 28]

    """
    return step <= DENSE_STEPS or last_full is None or step - last_full >= full_every


def resolve_schedule(schedule: Schedule) -> Callable[[int], bool]:
    """Turn the user's ``schedule`` argument into a predicate over 0-based optimizer steps.

    Raises:
        ValueError: for a non-positive integer or anything that is neither int, callable nor None.

    """
    if schedule is None:
        return default_schedule
    if isinstance(schedule, bool) or (isinstance(schedule, int) and schedule < 1):
        raise ValueError(
            f"schedule must be None (built-in), a positive int (log every N steps) or a callable "
            f"step -> bool; got {schedule!r}. Use schedule=1 to log every step."
        )
    if isinstance(schedule, int):
        return _Every(schedule)
    if callable(schedule):
        return schedule
    raise ValueError(
        f"schedule must be None, a positive int or a callable step -> bool; got {type(schedule).__name__}."
    )
