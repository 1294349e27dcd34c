"""Write the nndiag TensorBoard dashboard layout as JSON (for reading, diffing, or other tools).

The layout itself is built by :mod:`nndiag.sinks.dashboard` and written into every run by
nndiag; this script shows it for a given run (its recorded layers and parameters) or, with no
argument, for nndiag's demo model, which is what ``dashboards/nndiag_layout.json`` holds.

Usage:
    python dashboards/export_layout.py [RUN_DIR] > layout.json
"""

from __future__ import annotations

import json
import sys

from nndiag.sinks.dashboard import layout

DEMO_LAYERS = ["input", "net.0", "net.1", "net.2", "net.3", "net.4", "net.5", "net.6"]
DEMO_PARAMS = [f"net.{i}.{kind}" for i in (0, 2, 4, 6) for kind in ("weight", "bias")]


def layout_for(run_dir: str | None) -> dict[str, dict[str, list[object]]]:
    """The layout for the run at ``run_dir``, or for the demo model when ``None``."""
    if run_dir is None:
        return layout(DEMO_LAYERS, DEMO_PARAMS)
    from nndiag import load_run

    h = load_run(run_dir, max_steps=2).history
    layers = list(dict.fromkeys(h[(h.stat == "act_std") & (h.layer != "")].layer))
    params = list(dict.fromkeys(h[h.stat == "update_ratio"].layer))
    return layout(layers, params)


if __name__ == "__main__":
    print(json.dumps(layout_for(sys.argv[1] if len(sys.argv) > 1 else None), indent=2))
