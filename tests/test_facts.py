"""Typed model facts: the stored JSON is unchanged, partial and unknown keys are tolerated, one pivot."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from nndiag import Monitor, load_run
from nndiag.facts import InitFacts, LayerFacts, ModelFacts, ParamFacts
from nndiag.pivot import forward_sorted
from nndiag.rules.view import RunView
from nndiag.summary import forward_sorted as summary_sorted

FIXTURE = Path(__file__).parent / "fixtures" / "run_v1" / "nndiag.sqlite"  # written before ModelFacts existed


def stored_facts_text(path: Path) -> str:
    with sqlite3.connect(path) as con:
        return dict(con.execute("SELECT key, value FROM meta"))["facts"]


def test_facts_of_a_store_written_before_round_trip_to_the_same_json():
    text = stored_facts_text(FIXTURE)
    facts = ModelFacts.from_dict(json.loads(text))
    assert json.dumps(facts.to_dict()) == text
    assert facts.layers["0"] == LayerFacts("Linear", "linear", "relu", 4, 8, False, 40, 0, [8, 8])
    assert facts.params["2.weight"] == ParamFacts([8, 8], 64, True, True, "2")
    assert facts.init["4.bias"].units_identical is False
    assert facts.forward_order == ["0", "1", "2", "3", "4"]
    assert (facts.batch_size, facts.has_batchnorm, facts.model_class) == (8, False, "Sequential")
    assert facts.optimizers[0]["class"] == "SGD"


def test_facts_written_now_have_the_same_keys_and_types(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, log_dir=tmp_path, schedule=2, tensorboard=False, report=False) as mon:
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    old = json.loads(stored_facts_text(FIXTURE))
    new = json.loads(stored_facts_text(Path(mon.log_dir) / "nndiag.sqlite"))

    def shape(obj: object) -> object:  # keys (in order) and value types, not values
        if isinstance(obj, dict):
            return [(k, shape(v)) for k, v in obj.items()]
        if isinstance(obj, list):
            return [shape(v) for v in obj]
        return type(obj).__name__

    assert list(new)[: len(old)] == list(old)  # later features may add keys after these (task facts)
    assert [(k, shape(new[k])) for k in old] == shape(old)
    assert new["layers"] == old["layers"]
    assert new == mon.session.facts == load_run(mon.log_dir).facts
    assert mon.session.model_facts == ModelFacts.from_dict(new)


def test_partial_and_unknown_facts_are_tolerated():
    facts = ModelFacts.from_dict({"layers": {"fc": {"kind": "linear", "shiny": 1}}, "task": "classification"})
    assert facts.layers["fc"].kind == "linear"
    assert facts.layers["fc"].fan_in is None
    assert facts.layers["fc"].extra == {"shiny": 1}
    assert facts.extra == {"task": "classification"}
    assert facts.to_dict()["task"] == "classification"
    assert facts.to_dict()["layers"]["fc"]["shiny"] == 1
    assert facts.layer("missing") == LayerFacts()
    assert facts.param("missing").get("trainable", True) is True
    assert ModelFacts.from_dict(None) == ModelFacts()
    assert ModelFacts.from_dict(facts) is facts
    assert InitFacts.from_dict({"mean": 0.0})["mean"] == 0.0


def test_run_view_accepts_dicts_and_model_facts(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "nndiag.sqlite")
    run = load_run(tmp_path)
    a, b = RunView(run.history, run.facts), RunView(run.history, ModelFacts.from_dict(run.facts))
    assert a.facts == b.facts
    assert a.matrix("act_std").equals(b.matrix("act_std"))
    assert list(a.matrix("act_std").columns) == ["input", "0", "1", "2", "3", "4"]
    assert a.layer("2").activation == "tanh"
    assert a.num_classes() == 3


def test_one_forward_order_sort():
    names = ["fc2", "fc1.weight", "input", "zz", "fc1", "fc2.bias", "a.b.c"]
    order = ["fc1", "fc2"]
    expected = ["input", "fc1", "fc1.weight", "fc2", "fc2.bias", "a.b.c", "zz"]
    assert forward_sorted(names, order) == expected
    assert summary_sorted(names, {"forward_order": order}) == expected
    assert (
        RunView(pd.DataFrame(columns=["step", "layer", "stat", "value"]), {"forward_order": order}).ordered(names)
        == expected
    )
