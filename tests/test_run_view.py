"""RunView's series, matrices and per-statistic rows equal the plain pandas computations.

The view splits the history with one factorize and one sort per check (not a groupby per
statistic); these tests compare it with ``groupby``/``pivot_table`` on awkward histories: steps out
of order, repeated (step, layer) cells, NaN and Inf values, the run-wide layer ``""``, a statistic
of one row, and an empty history.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nndiag.pivot import pivot_arrays, pivot_last
from nndiag.rules.view import RunView


def awkward_history(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 400
    layers = np.array(["", "fc1", "act", "fc2", "fc1.weight"], dtype=object)
    stats = np.array(["loss", "act_std", "grad_norm", "update_ratio"], dtype=object)
    values = rng.normal(size=n)
    values[rng.random(n) < 0.1] = np.nan
    values[rng.random(n) < 0.03] = np.inf
    frame = pd.DataFrame(
        {
            "step": rng.integers(0, 40, n),  # out of order, with repeated cells
            "layer": layers[rng.integers(0, len(layers), n)],
            "stat": stats[rng.integers(0, len(stats), n)],
            "value": values,
        }
    )
    single = pd.DataFrame({"step": [7], "layer": ["fc2"], "stat": ["dead_frac"], "value": [0.5]})
    return pd.concat([frame, single], ignore_index=True)


def reference_series(h: pd.DataFrame, stat: str, layer: str) -> pd.Series:
    sel = h[(h.stat == stat) & (h.layer == layer)]
    order = np.argsort(sel.step.to_numpy(), kind="stable")
    return pd.Series(sel.value.to_numpy()[order], index=sel.step.to_numpy()[order], dtype=float)


@pytest.mark.parametrize("seed", range(5))
def test_series_rows_and_matrices_match_pandas(seed: int) -> None:
    h = awkward_history(seed)
    view = RunView(h, {"forward_order": ["fc1", "act", "fc2"]})
    for stat in [*h.stat.unique(), "never_recorded"]:
        rows = view.rows(stat)
        pd.testing.assert_frame_equal(rows, h[h.stat == stat])
        assert view.has(stat) == (stat in set(h.stat))
        for layer in [*h.layer.unique(), "nowhere"]:
            got = view.series(stat, layer)
            want = reference_series(h, stat, layer)
            np.testing.assert_array_equal(got.index.to_numpy(), want.index.to_numpy())
            np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())
        sel = h[h.stat == stat]
        if sel.empty:
            assert view.matrix(stat).empty
            continue
        want_matrix = sel.pivot_table(index="step", columns="layer", values="value", aggfunc="last", dropna=False)
        got_matrix = view.matrix(stat)
        assert list(got_matrix.columns) == view.ordered([str(c) for c in want_matrix.columns])
        pd.testing.assert_frame_equal(
            got_matrix[sorted(got_matrix.columns)], want_matrix[sorted(want_matrix.columns)], check_names=False
        )


def test_pivot_last_is_pivot_arrays_of_its_columns() -> None:
    h = awkward_history(11)
    a = pivot_last(h, "layer", "step")
    b = pivot_arrays(h.layer.to_numpy(), h.step.to_numpy(), h.value.to_numpy(), "layer", "step")
    pd.testing.assert_frame_equal(a, b)


def test_an_empty_history_has_nothing() -> None:
    for h in (pd.DataFrame(), pd.DataFrame(columns=["step", "layer", "stat", "value"])):
        view = RunView(h)
        assert view.last_step == -1
        assert not view.has("loss")
        assert view.series("loss").empty
        assert view.matrix("loss").empty
        assert view.rows("loss").empty


def pandas_stuck(view: RunView, names: list[str]) -> pd.DataFrame:
    """The frozen-parameter mask as it was written in pandas (the reference for the numpy version)."""
    upd, wn = view.matrix("update_ratio"), view.matrix("weight_norm")
    index = upd.index.union(wn.index)
    r = upd.reindex(index=index, columns=names)
    w = wn.reindex(index=index, columns=names)
    same = (w == w.shift(1)) | (w == 0)
    return (r == 0) | (r.isna() & w.notna() & same)


@pytest.mark.parametrize("seed", range(5))
def test_frozen_parameter_mask_matches_its_pandas_form(seed: int) -> None:
    from nndiag.rules.params import _stuck

    rng = np.random.default_rng(seed)
    rows = []
    for step in range(0, 60, 3):
        for name in ("a.weight", "a.bias", "b.weight"):
            ratio = rng.choice([0.0, 1e-3, np.nan])
            norm = rng.choice([0.0, 1.5, 2.5, np.nan])
            if step % 2 or name != "b.weight":  # b.weight: weight norms on some steps only
                rows.append((step, name, "weight_norm", norm))
            if rng.random() < 0.8:
                rows.append((step, name, "update_ratio", ratio))
    view = RunView(pd.DataFrame(rows, columns=["step", "layer", "stat", "value"]))
    names = ["a.weight", "a.bias", "b.weight", "never.recorded"]
    got = _stuck(view, names)
    pd.testing.assert_frame_equal(got, pandas_stuck(view, names), check_names=False)


def pandas_ratio_checks(view: RunView, cols: list[str], how: str) -> pd.Series:
    """The update-ratio aggregate as it was written in pandas (the reference for the numpy version)."""
    m = view.matrix("update_ratio")
    sub = m[cols].where(np.isfinite(m[cols]))
    agg = sub.max(axis=1, skipna=True) if how == "max" else sub.median(axis=1, skipna=True)
    return agg.dropna()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("how", ["max", "median"])
def test_update_ratio_aggregate_matches_its_pandas_form(seed: int, how: str) -> None:
    from nndiag.rules.ratios import ratio_checks

    rng = np.random.default_rng(seed)
    rows = []
    for step in range(0, 80, 4):
        bad_step = rng.random() < 0.2  # every ratio of the step NaN/Inf: the step is dropped
        for name in ("a.weight", "a.bias", "b.weight", "c.weight"):
            if rng.random() < 0.85:
                value = rng.choice([np.nan, np.inf]) if bad_step or rng.random() < 0.15 else 10 ** rng.uniform(-5, -1)
                rows.append((step, name, "update_ratio", value))
    view = RunView(pd.DataFrame(rows, columns=["step", "layer", "stat", "value"]))  # no facts: *weight names
    got = ratio_checks(view, how)
    want = pandas_ratio_checks(view, ["a.weight", "b.weight", "c.weight"], how)
    assert len(want) < 20  # some steps had no finite ratio
    pd.testing.assert_series_equal(got, want, check_names=False)


@pytest.mark.parametrize("seed", range(5))
def test_trailing_true_matches_the_per_column_streak(seed: int) -> None:
    from nndiag.rules.layers import sustained_since
    from nndiag.rules.params import trailing_true

    rng = np.random.default_rng(seed)
    mask = rng.random((12, 6)) < 0.7
    mask[:, 0] = True  # all True
    mask[-1, 1] = False  # ends in False
    runs = trailing_true(mask)
    for j in range(mask.shape[1]):
        start = sustained_since(pd.Series(mask[:, j], index=np.arange(12) * 5), 1)
        assert runs[j] == (0 if start is None else 12 - start // 5)
    assert runs[0] == 12 and runs[1] == 0
    assert trailing_true(np.zeros((0, 3), dtype=bool)).tolist() == [0, 0, 0]
