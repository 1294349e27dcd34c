"""The quantity registry: stored names unchanged, stores written before it load unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nndiag import load_run
from nndiag import quantities as Q
from nndiag.sinks.tensorboard import tag_for

FIXTURE = Path(__file__).parent / "fixtures" / "run_v1"  # written by nndiag 0.x before the registry existed

STORED_NAMES = {
    "act_mean",
    "act_std",
    "nonfinite",
    "dead_frac",
    "sat_frac",
    "act_hist",
    "grad_norm",
    "weight_norm",
    "update_ratio",
    "loss",
    "val_loss",
    "grad_norm_total",
    "lr",
}


def test_stored_names_are_unchanged():
    assert set(Q.QUANTITIES) >= STORED_NAMES  # quantities may be added; none of schema 1 renamed or removed
    for name, q in Q.QUANTITIES.items():
        assert q.name == name
        assert getattr(Q, name.upper()) == name
        assert q.scope in ("layer", "param", "run")
        assert q.title and q.finalised


@pytest.mark.parametrize("name", sorted(STORED_NAMES))
def test_tags_match_the_tensorboard_sink(name):
    assert Q.spec(name).tag("fc.weight") == tag_for(name, "fc.weight") == f"nndiag/{name}/fc.weight"
    assert Q.spec(name).tag() == tag_for(name, "") == f"nndiag/{name}"


def test_unknown_quantity_names_the_known_ones():
    with pytest.raises(KeyError, match="act_std"):
        Q.spec("act_sdt")


def test_store_written_before_the_registry_loads_unchanged(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "run")
    run = load_run(tmp_path / "run")
    h = run.history
    assert set(h.stat) == STORED_NAMES - {"act_hist"}  # histograms go to TensorBoard only
    assert set(h[h.layer == ""].stat) == {Q.LOSS, Q.VAL_LOSS, Q.GRAD_NORM_TOTAL}
    assert set(h[h.layer == "0.weight"].stat) == set(Q.PARAMETER_STATS)
    assert set(h[h.layer == "1"].stat) == {Q.ACT_MEAN, Q.ACT_STD, Q.NONFINITE, Q.DEAD_FRAC}
    assert set(h[h.layer == "3"].stat) == {Q.ACT_MEAN, Q.ACT_STD, Q.NONFINITE, Q.SAT_FRAC}
    assert sorted(h[h.stat == Q.LOSS].step) == [0, 1, 2, 3, 4]
    assert sorted(h[h.stat == Q.ACT_STD].step.unique()) == [0, 2, 4]
    assert len(h) == 130
    assert run.meta["status"] == "finished"
    assert run.meta["schema_version"] == 1
    for name, q in Q.QUANTITIES.items():
        layers = set(h[h.stat == name].layer)
        if not layers:
            continue
        if q.scope == "run":
            assert layers <= {"", "optimizer"}, name
        elif q.scope == "param":
            assert all(layer.endswith(("weight", "bias")) for layer in layers), name
        else:
            assert "" not in layers, name
