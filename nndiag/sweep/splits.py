"""How diagnoses distribute over the search space: "lr > 3e-02: 9 of 10 trials diverged".

For every numeric hyperparameter and every outcome seen in at least 2 trials (an nndiag
diagnosis code, ``failed`` for trials that raised or returned no finite value, ``pruned``), each threshold
between two neighbouring sampled values splits the trials in two. A split is reported when it is
clear: on one side at least 80% of the trials (and at least 2) have the outcome, on the other at
most 20%, and a one-sided Fisher exact test gives p <= 0.01 (chance alone would rarely sort the
outcome that cleanly). Only the most significant split per (outcome, hyperparameter) is kept.
Thresholds are printed as the roundest number between the two neighbouring values.

Example:
    >>> from nndiag.sweep.trials import Param, Sweep, Trial
    >>> lrs = [10 ** (-5 + 4 * i / 29) for i in range(30)]
    >>> ts = [Trial(i, {"lr": lr}, None if lr > 3e-2 else 1.0, "failed" if lr > 3e-2 else "complete",
    ...             ("loss_diverging",) if lr > 3e-2 else ()) for i, lr in enumerate(lrs)]
    >>> sw = Sweep("s", "", "minimize", "value", ts, {"lr": Param("lr", "float", 1e-5, 1e-1, log=True)})
    >>> [s.sentence() for s in outcome_splits(sw) if s.outcome == "loss_diverging"]
    ['lr > 0.03: 4 of 4 trials diverged; lr <= 0.03: 0 of 26']
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nndiag.sweep.trials import Param, Sweep, Trial, fmt

MIN_RATE = 0.8  # the affected side: at least 80% of its trials have the outcome
MAX_OTHER = 0.2  # the other side: at most 20%
MIN_HITS = 2
MAX_P = 0.01
VERBS = {
    "loss_diverging": "diverged",
    "nonfinite_loss": "hit a non-finite loss",
    "failed": "failed",
    "pruned": "were pruned",
    "lr_too_high": "had a learning rate too high (lr_too_high)",
    "lr_too_low": "had a learning rate too low (lr_too_low)",
}


@dataclass(frozen=True)
class Split:
    """A clear split of one outcome by one hyperparameter."""

    outcome: str
    param: str
    threshold: float
    above: bool  # the outcome is on the side ``param > threshold``
    hits_in: int
    n_in: int
    hits_out: int
    n_out: int
    p_value: float

    def sentence(self) -> str:
        """``lr > 0.03: 9 of 10 trials diverged; lr <= 0.03: 0 of 20``."""
        verb = VERBS.get(self.outcome, f"had {self.outcome}")
        t = fmt(self.threshold)
        inside, outside = (">", "<=") if self.above else ("<=", ">")
        return (
            f"{self.param} {inside} {t}: {self.hits_in} of {self.n_in} trials {verb}; "
            f"{self.param} {outside} {t}: {self.hits_out} of {self.n_out}"
        )


def outcomes(trial: Trial) -> set[str]:
    """The outcome labels of a trial: its diagnosis codes, plus ``failed`` or ``pruned``."""
    return set(trial.diagnoses) | ({trial.state} if trial.state in ("failed", "pruned") else set())


def fisher_one_sided(hits_in: int, n_in: int, hits: int, n: int) -> float:
    """P(at least ``hits_in`` of the ``hits`` outcomes fall in a group of ``n_in`` of ``n``), by chance."""
    total = math.comb(n, n_in)
    return sum(math.comb(hits, i) * math.comb(n - hits, n_in - i) for i in range(hits_in, min(hits, n_in) + 1)) / total


def roundest_between(a: float, b: float, log: bool) -> float:
    """The number with fewest significant digits in ``[a, b)`` near their (geometric) middle.

    Example:
        >>> roundest_between(0.021, 0.045, True), roundest_between(3, 5, False)
        (0.03, 4.0)
    """
    mid = math.sqrt(a * b) if log and a > 0 else (a + b) / 2
    for digits in range(1, 8):
        r = float(f"{mid:.{digits - 1}e}")
        if a <= r < b:
            return r
    return a


def _best_split(param: Param, pairs: list[tuple[float, bool]], outcome: str) -> Split | None:
    pairs.sort()
    n, hits = len(pairs), sum(h for _, h in pairs)
    best: Split | None = None
    below_hits = 0
    for i in range(1, n):
        below_hits += pairs[i - 1][1]
        a, b = pairs[i - 1][0], pairs[i][0]
        if a == b:
            continue
        n_below, n_above = i, n - i
        above_hits = hits - below_hits
        for above, h_in, n_in, h_out, n_out in (
            (True, above_hits, n_above, below_hits, n_below),
            (False, below_hits, n_below, above_hits, n_above),
        ):
            if h_in < MIN_HITS or h_in / n_in < MIN_RATE or h_out / n_out > MAX_OTHER:
                continue
            p = fisher_one_sided(h_in, n_in, hits, n)
            if p <= MAX_P and (best is None or p < best.p_value):
                t = roundest_between(a, b, param.log)
                best = Split(outcome, param.name, t, above, h_in, n_in, h_out, n_out, p)
    return best


def outcome_splits(sweep: Sweep) -> list[Split]:
    """All clear splits, most significant first."""
    trials = [t for t in sweep.trials if t.state != "running"]
    labels: dict[str, int] = {}
    for t in trials:
        for o in outcomes(t):
            labels[o] = labels.get(o, 0) + 1
    found = []
    for outcome, count in labels.items():
        if count < MIN_HITS:
            continue
        for name, param in sweep.params.items():
            if not param.numeric:
                continue
            pairs = [(float(t.params[name]), outcome in outcomes(t)) for t in trials if t.params.get(name) is not None]
            split = _best_split(param, pairs, outcome)
            if split is not None:
                found.append(split)
    return sorted(found, key=lambda s: (s.p_value, s.outcome, s.param))
