"""Everything one report shows, computed once from a stored run: :func:`build_report`.

The HTML, Markdown and JSON renderings all read a :class:`RunReport`, so they always agree.

Example:
    >>> import tempfile, numpy as np
    >>> from nndiag.rows import Rows
    >>> from nndiag.store.writer import RunStore
    >>> d = tempfile.mkdtemp()
    >>> store = RunStore(d)
    >>> store.write_rows(Rows(np.array([0, 1]), ["", ""], ["loss", "loss"], np.array([2.3, 2.1])))
    >>> store.close()
    >>> r = build_report(d)
    >>> r.verdict.state, r.overview["optimizer_steps"], r.overview["loss_last"]
    ('healthy', 2, 2.1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nndiag import quantities as Q
from nndiag.advisor import by_severity
from nndiag.diagnosis import Diagnosis
from nndiag.facts import LayerFacts, ModelFacts
from nndiag.report.layers import StatMatrix, stat_matrix
from nndiag.report.verdict import Verdict, verdict
from nndiag.rules.task_view import task_of
from nndiag.rules.view import RunView
from nndiag.store.reader import load_run
from nndiag.summary import KEY_STATS, layer_summary, run_overview

# heatmaps have at most this many columns: more than a screen's width of pixels is not more information
MAX_REPORT_STEPS = 400
HEATMAP_STATS = (Q.ACT_STD, Q.DEAD_FRAC, Q.SAT_FRAC, Q.UPDATE_RATIO)


@dataclass(frozen=True)
class RunReport:
    """One run, ready to render.

    Attributes:
        path: the run's log directory.
        name: a short display name (the last two path components).
        meta: status, versions, framework, hyperparameters (``meta["hparams"]``).
        facts: model facts recorded with the run.
        verdict: healthy / problems found.
        diagnoses: most severe and root causes first (see :func:`nndiag.advisor.by_severity`).
        overview: step counts and loss figures.
        layers: per-layer summary (first/last value of the key statistics), forward order.
        history: the recorded history, per-layer series thinned to ``MAX_REPORT_STEPS`` steps.

    """

    path: Path
    name: str
    meta: dict[str, Any]
    facts: ModelFacts
    verdict: Verdict
    diagnoses: list[Diagnosis]
    overview: dict[str, Any]
    layers: pd.DataFrame
    history: pd.DataFrame = field(repr=False)

    def series(self, stat: str) -> pd.Series:
        """A run-wide series (``loss``, ``val_loss``, ...) indexed by step, NaN kept."""
        h = self.history[(self.history.stat == stat) & (self.history.layer == "")]
        return h.groupby("step")["value"].last()

    def matrix(self, stat: str) -> StatMatrix:
        """A per-layer statistic as a layer x step matrix, forward order."""
        return stat_matrix(self.history, stat, self.facts)

    def layer_kind(self, name: str) -> str:
        """``Linear``, ``ReLU``, ... for a layer; the owning layer's for a parameter; ``""`` if unknown."""
        layers = self.facts.layers
        info = layers.get(name) or layers.get(name.rsplit(".", 1)[0]) or LayerFacts()
        return str(info.module_type or ("model input" if name == Q.INPUT_LAYER else ""))


def build_report(path: str | Path, max_steps: int = MAX_REPORT_STEPS) -> RunReport:
    """Load a run (finished or killed mid-way) and compute what its report shows.

    Raises:
        RunNotFoundError: no run at ``path``.
        CorruptRunError: the store cannot be read.

    """
    loaded = load_run(path, max_steps=max_steps)
    history = loaded.history
    run_dir = loaded.path.parent if loaded.path is not None else Path(path)
    status = str(loaded.meta.get("status", "unknown"))
    overview = _overview(history)
    diagnoses = by_severity(loaded.diagnoses)
    facts = ModelFacts.from_dict(loaded.facts)
    overview["task"] = task_overview(history, facts)
    summary = layer_summary(history, facts, KEY_STATS)  # forward order
    return RunReport(
        path=run_dir,
        name="/".join(run_dir.parts[-2:]),
        meta=loaded.meta,
        facts=facts,
        verdict=verdict(diagnoses, status, overview["optimizer_steps"]),
        diagnoses=diagnoses,
        overview=overview,
        layers=summary,
        history=history,
    )


def task_overview(history: pd.DataFrame, facts: ModelFacts) -> dict[str, Any] | None:
    """What the run asked the network to do: loss kind, output activation, targets, constant-prediction loss.

    ``None`` when the task was not recorded (no loss graph, no targets).

    Example:
        >>> f = ModelFacts.from_dict({"task": {"loss": {"kind": "mse", "reduction": "mean"},
        ...     "target": {"looks_like": "continuous", "min": -1.0, "max": 3.0, "mean": 0.5, "std": 1.0,
        ...                "shape": [32, 1]}, "baseline_loss": 1.0}})
        >>> task_overview(pd.DataFrame(columns=["step", "layer", "stat", "value"]), f)["targets"]
        'continuous, 32 x 1 per batch, range -1 to 3, mean 0.5, std 1'
    """
    t = task_of(RunView(history, facts))
    if t.loss_kind == "unknown" and not t.target:
        return None
    targets = None
    if t.target:
        shape = " x ".join(str(s) for s in t.target.get("shape") or [])
        rng = t.target_range
        parts = [str(t.looks_like or "unknown"), f"{shape} per batch" if shape else ""]
        if rng is not None:
            parts.append(f"range {rng[0]:.3g} to {rng[1]:.3g}")
        for key in ("mean", "std"):
            value = t.target.get(key)
            if isinstance(value, (int, float)):
                parts.append(f"{key} {value:.3g}")
        classes = t.target.get("num_classes")
        if isinstance(classes, int):
            parts.append(f"{classes} classes")
        targets = ", ".join(p for p in parts if p)
    return {
        "loss": t.loss_kind if t.reduction in ("unknown", "mean") else f"{t.loss_kind} ({t.reduction})",
        "output_activation": t.final_activation,
        "targets": targets,
        "baseline_loss": t.baseline,
    }


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _overview(history: pd.DataFrame) -> dict[str, Any]:
    """:func:`nndiag.summary.run_overview` (non-finite losses as ``None``) plus what the report adds."""
    base = run_overview(history)
    run_wide = history[history.layer == ""]
    loss = run_wide[run_wide.stat == Q.LOSS].value.to_numpy()
    val = run_wide[run_wide.stat == Q.VAL_LOSS].value.to_numpy()
    finite = loss[np.isfinite(loss)]
    nonfinite = run_wide[(run_wide.stat == Q.LOSS) & ~np.isfinite(run_wide.value)]
    return {
        **base,
        "parameters": int(history[(history.layer != "") & (history.stat == Q.GRAD_NORM)].layer.nunique()),
        "loss_first": None if base["loss_first"] is None else _finite(base["loss_first"]),
        "loss_last": None if base["loss_last"] is None else _finite(base["loss_last"]),
        "loss_min": float(finite.min()) if len(finite) else None,
        "first_nonfinite_loss_step": int(nonfinite.step.min()) if len(nonfinite) else None,
        "val_loss_last": _finite(val[-1]) if len(val) else None,
        "val_loss_min": float(np.nanmin(val)) if len(val) and np.isfinite(val).any() else None,
    }
