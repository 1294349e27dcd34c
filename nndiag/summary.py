"""A per-layer summary table of a run: the first and last recorded value of the key statistics.

Example:
    >>> import pandas as pd
    >>> from nndiag.summary import layer_summary
    >>> h = pd.DataFrame({"step": [0, 5], "layer": ["fc", "fc"], "stat": ["act_std", "act_std"], "value": [1.0, 0.5]})
    >>> layer_summary(h).loc["fc", "act_std last"]
    0.5
"""

from __future__ import annotations

from typing import Any

import pandas as pd

KEY_STATS = ("act_std", "dead_frac", "sat_frac", "nonfinite", "grad_norm", "update_ratio")


def layer_summary(history: pd.DataFrame, facts: dict[str, Any] | None = None, stats: tuple[str, ...] = KEY_STATS) -> pd.DataFrame:
    """One row per layer/parameter (forward order when known), columns ``<stat> first`` / ``<stat> last``."""
    h = history[history.stat.isin(stats) & (history.layer != "")]
    if h.empty:
        return pd.DataFrame()
    h = h.dropna(subset=["value"]).sort_values("step", kind="stable")
    grouped = h.groupby(["layer", "stat"], sort=False)["value"]
    table = pd.concat({"first": grouped.first(), "last": grouped.last()}, axis=1).unstack("stat")
    table.columns = [f"{stat} {when}" for when, stat in table.columns]
    ordered = [f"{s} {w}" for s in stats for w in ("first", "last") if f"{s} {w}" in table.columns]
    table = table[ordered]
    order = (facts or {}).get("forward_order") or []
    rank = {name: i for i, name in enumerate(["input", *order])}
    keys = sorted(table.index, key=lambda n: (rank.get(n, rank.get(n.rsplit(".", 1)[0], len(rank)) + 0.5), n))
    return table.loc[keys]


def run_overview(history: pd.DataFrame) -> dict[str, Any]:
    """Counts and the loss trend of a run, for the one-line headers of the CLI."""
    loss = history[history.stat == "loss"].sort_values("step")
    return {
        "optimizer_steps": int(history.step.max()) + 1 if len(history) else 0,
        "logging_steps": int(history[history.stat == "grad_norm_total"].step.nunique()),
        "layers": int(history[history.stat == "act_std"].layer.nunique()),
        "loss_first": float(loss.value.iloc[0]) if len(loss) else None,
        "loss_last": float(loss.value.iloc[-1]) if len(loss) else None,
    }
