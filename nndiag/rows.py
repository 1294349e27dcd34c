"""Columnar rows ``(step, layer, stat, value)``: the unit every sink consumes.

Example:
    >>> import numpy as np
    >>> from nndiag.rows import Rows
    >>> Rows(np.array([0]), ["fc"], ["dead_frac"], np.array([0.5])).frame().shape
    (1, 4)

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

COLUMNS = ["step", "layer", "stat", "value"]


@dataclass
class Rows:
    """Parallel columns of statistics rows."""

    step: np.ndarray
    layers: list[str]
    stats: list[str]
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.stats)

    def frame(self) -> pd.DataFrame:
        """As a long-format DataFrame with columns step, layer, stat, value."""
        return pd.DataFrame({"step": self.step, "layer": self.layers, "stat": self.stats, "value": self.value})
