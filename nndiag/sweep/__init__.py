"""The hyperparameter-search advisor behind ``nndiag sweep``.

Reads a sweep (an Optuna study or a folder of nndiag runs) into one table of trials, then checks
it the way the lecture's coarse-to-fine search asks: which trials are best, whether the best
values sit on the border of the searched range (widen it), which narrower range to search next,
which hyperparameters matter, where the diagnoses cluster ("lr > 0.03: 9 of 10 trials diverged"),
and whether an important parameter was searched on a grid. Only reading an Optuna study needs
optuna (``pip install nndiag[optuna]``).

* :mod:`~nndiag.sweep.trials`: :class:`Sweep`, :class:`Trial`, :class:`Param`;
* :mod:`~nndiag.sweep.sources`: :func:`load_sweep`, :func:`from_study`;
* :mod:`~nndiag.sweep.importance`, :mod:`~nndiag.sweep.border`, :mod:`~nndiag.sweep.splits`: the checks;
* :mod:`~nndiag.sweep.analysis`: :func:`analyze` -> :class:`SweepReport`;
* :mod:`~nndiag.sweep.render_text`, :mod:`~nndiag.sweep.render_html`: the renderings.

Example:
    >>> from nndiag.sweep import Param, Sweep, Trial, analyze
    >>> ts = [Trial(i, {"lr": 10 ** (-5 + 4 * i / 19)}, 20.0 - i) for i in range(20)]
    >>> space = {"lr": Param("lr", "float", 1e-5, 1e-1, log=True)}
    >>> print(analyze(Sweep("s", "", "minimize", "value", ts, space)).warnings[0])
    lr: best value on the border of the searched range; 3 of the best 3 trials lie in the high 15%
    of the range [1e-05, 0.1] (log scale): widen the range above 0.1 (try up to 1).
"""

from nndiag.sweep.analysis import ParamAdvice, SweepReport, analyze
from nndiag.sweep.render_html import render_html
from nndiag.sweep.render_text import render_text
from nndiag.sweep.sources import BROKEN_CODES, from_study, load_sweep
from nndiag.sweep.trials import Param, Sweep, Trial

__all__ = [
    "BROKEN_CODES",
    "Param",
    "ParamAdvice",
    "Sweep",
    "SweepReport",
    "Trial",
    "analyze",
    "from_study",
    "load_sweep",
    "render_html",
    "render_text",
]
