"""A per-layer summary table of a run: the first and last recorded value of the key statistics.

Example:
    >>> import pandas as pd
    >>> from nndiag.summary import layer_summary
    >>> h = pd.DataFrame({"step": [0, 5], "layer": ["fc", "fc"], "stat": ["act_std", "act_std"], "value": [1.0, 0.5]})
    >>> float(layer_summary(h).loc["fc", "act_std last"])
    0.5
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from nndiag import pivot
from nndiag import quantities as Q
from nndiag.facts import ModelFacts
from nndiag.quantities import ACTIVATION_STATS, KEY_STATS, PARAMETER_STATS

__all__ = [
    "ACTIVATION_STATS",
    "KEY_STATS",
    "PARAMETER_STATS",
    "forward_sorted",
    "layer_summary",
    "render_text",
    "run_overview",
]


def forward_sorted(names: Iterable[str], facts: ModelFacts | dict[str, Any] | None) -> list[str]:
    """``names`` in forward order: ``input`` first, layers as executed, parameters after their layer.

    Example:
        >>> forward_sorted(["fc2", "fc1.weight", "input", "fc1"], {"forward_order": ["fc1", "fc2"]})
        ['input', 'fc1', 'fc1.weight', 'fc2']
    """
    return pivot.forward_sorted(set(names), ModelFacts.from_dict(facts).forward_order)


def layer_summary(
    history: pd.DataFrame, facts: ModelFacts | dict[str, Any] | None = None, stats: tuple[str, ...] = KEY_STATS
) -> pd.DataFrame:
    """One row per layer/parameter (forward order when known), columns ``<stat> first`` / ``<stat> last``."""
    h = history[history.stat.isin(stats) & (history.layer != "")]
    if h.empty:
        return pd.DataFrame()
    h = h.dropna(subset=["value"]).sort_values("step", kind="stable")
    grouped = h.groupby(["layer", "stat"], sort=False)["value"]
    table = pd.concat({"first": grouped.first(), "last": grouped.last()}, axis=1).unstack("stat")
    table.columns = [f"{stat} {when}" for when, stat in table.columns]
    ordered = [f"{s} {w}" for s in stats for w in ("first", "last") if f"{s} {w}" in table.columns]
    table = table[ordered].dropna(axis=1, how="all")
    return table.loc[forward_sorted(table.index, facts)]


def run_overview(history: pd.DataFrame) -> dict[str, Any]:
    """Counts and the loss trend of a run, for the one-line headers of the CLI."""
    loss = history[history.stat == Q.LOSS].sort_values("step")
    return {
        "optimizer_steps": int(history.step.max()) + 1 if len(history) else 0,
        "logging_steps": int(history[history.stat == Q.GRAD_NORM_TOTAL].step.nunique()),
        "layers": int(history[(history.stat == Q.ACT_STD) & (history.layer != Q.INPUT_LAYER)].layer.nunique()),
        "loss_first": float(loss.value.iloc[0]) if len(loss) else None,
        "loss_last": float(loss.value.iloc[-1]) if len(loss) else None,
    }


def render_text(summary: pd.DataFrame, stats: tuple[str, ...]) -> str:
    """A compact text table: one column per statistic, cells ``first -> last``.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"act_std first": [1.0], "act_std last": [0.5]}, index=["fc"])
        >>> print(render_text(t, ("act_std",)))
             act_std
        fc  1 -> 0.5
    """
    cols: dict[str, list[str]] = {}
    for name in stats:
        first, last = f"{name} first", f"{name} last"
        if first not in summary.columns:
            continue
        cells = [
            "" if pd.isna(a) and pd.isna(b) else f"{a:.3g} -> {b:.3g}"
            for a, b in zip(summary[first], summary[last], strict=True)
        ]
        if any(cells):
            cols[name] = cells
    if not cols:
        return "(none)"
    table = pd.DataFrame(cols, index=summary.index).rename_axis(None)
    return table[(table != "").any(axis=1)].to_string()
