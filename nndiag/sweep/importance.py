"""Which hyperparameters matter: the share of the objective's variation each one explains.

For each hyperparameter the trials are grouped by its value (each distinct value when
there are few, else ``b = clamp(round(sqrt(n)), 3, 8)`` equal-count bins, in log space for log-scaled
parameters; categories as they are), and the objective's *ranks* (robust to a few huge losses)
are split into between-group and within-group variation. Failed and pruned trials take part
as tied worst ranks: a parameter whose high values make runs explode matters, even though those
runs have no value. The effect size is epsilon squared,
``(SS_between - (g - 1) * MS_within) / SS_total`` clipped at 0: like R², but a parameter that
has no effect scores about 0 instead of ``(g - 1) / (n - 1)``. It catches non-monotonic effects
(an interior optimum), needs no extra packages, and gives the same numbers for Optuna studies
and run folders. Shares are the effects normalised to sum to 1.

Optuna's evaluators were considered: fANOVA (and mean decrease impurity) need scikit-learn,
and PED-ANOVA with its default 10% quantile looks at only the best 2 trials of 20, which ranks
an irrelevant parameter close to the relevant one on small sweeps.

Example:
    >>> import numpy as np
    >>> from nndiag.sweep.trials import Param, Sweep, Trial
    >>> rng = np.random.default_rng(0)
    >>> ts = []
    >>> for i in range(30):
    ...     lr, wd = 10 ** rng.uniform(-5, -1), 10 ** rng.uniform(-6, -2)
    ...     ts.append(Trial(i, {"lr": lr, "wd": wd}, (np.log10(lr) + 3) ** 2))
    >>> space = {"lr": Param("lr", "float", 1e-5, 1e-1, log=True), "wd": Param("wd", "float", 1e-6, 1e-2, log=True)}
    >>> eff = effects(Sweep("s", "", "minimize", "value", ts, space))
    >>> {name: round(e, 2) for name, e in eff.items()}
    {'lr': 0.78, 'wd': 0.15}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nndiag.sweep.trials import Param, Sweep

MIN_TRIALS = 5  # fewer finished trials: no importance estimate


def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for v in np.unique(values):  # ties share their mean rank
        tie = values == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def groups(param: Param, values: list[Any]) -> np.ndarray:
    """A group id per value: distinct values when few, else equal-count bins (log space when log)."""
    n = len(values)
    distinct = list(dict.fromkeys(values))
    bins = min(8, max(3, round(math.sqrt(n))))
    if not param.numeric or len(distinct) <= bins:
        index = {v: i for i, v in enumerate(distinct)}
        return np.array([index[v] for v in values])
    x = np.array([param.position(float(v)) for v in values])
    order = x.argsort(kind="stable")
    ids = np.empty(n, dtype=int)
    ids[order] = np.arange(n) * bins // n
    return ids


def epsilon_squared(y: np.ndarray, ids: np.ndarray) -> float:
    """Effect size of a grouping on ``y`` (0 = no effect beyond chance, 1 = explains everything)."""
    n, g = len(y), len(np.unique(ids))
    total = float(((y - y.mean()) ** 2).sum())
    if g < 2 or n - g < 1 or total == 0.0:
        return 0.0
    between = sum(float((ids == i).sum()) * (float(y[ids == i].mean()) - float(y.mean())) ** 2 for i in np.unique(ids))
    within = total - between
    return max(0.0, (between - (g - 1) * within / (n - g)) / total)


def effects(sweep: Sweep) -> dict[str, float]:
    """Epsilon squared of each hyperparameter (none with fewer than 5 finished trials)."""
    out = {}
    sign = 1.0 if sweep.direction == "minimize" else -1.0
    for name, param in sweep.params.items():
        trials = [t for t in sweep.trials if t.state != "running" and t.params.get(name) is not None]
        if sum(t.ok for t in trials) < MIN_TRIALS:
            continue
        y = _ranks(np.array([sign * float(t.value) if t.ok and t.value is not None else np.inf for t in trials]))
        out[name] = epsilon_squared(y, groups(param, [t.params[name] for t in trials]))
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def shares(eff: dict[str, float]) -> dict[str, float]:
    """Effects normalised to sum to 1 (all zero when none has an effect)."""
    total = sum(eff.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in eff.items() if math.isfinite(v)}
