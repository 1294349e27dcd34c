"""Resume: numbering (schedule position), open diagnoses and the run store continue through a checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import fit, lightning, loader, make_module, make_trainer
from torch import nn

from nndiag import DiagnosticsCallback, Monitor, load_run
from nndiag.demo.models import blobs, mlp
from nndiag.diagnosis import Diagnosis

ACT_STATS = {"act_mean", "act_std", "nonfinite", "dead_frac", "sat_frac"}


def loss_steps(history: Any) -> list[int]:
    return sorted(history.step[history.stat == "loss"].tolist())


def act_steps(history: Any) -> list[int]:
    return sorted(set(history.step[history.stat.isin(ACT_STATS)].tolist()))


class SaveAt:
    """A callback (listed after nndiag's) that writes a checkpoint when ``global_step`` reaches ``step``."""

    def __init__(self, pkg: str, step: int, path: Path) -> None:
        L = lightning(pkg)
        outer = self

        class _Save(L.Callback):
            def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
                if trainer.global_step == outer.step and not outer.path.exists():
                    trainer.save_checkpoint(outer.path)

        self.step, self.path = step, path
        self.callback = _Save()


def trainer(pkg: str, root: Path, callbacks: list[Any], max_epochs: int) -> Any:
    return make_trainer(pkg, root, callbacks, max_epochs=max_epochs)


def dead_mlp() -> nn.Module:
    """An MLP whose hidden ReLU layer is dead from the start (a fault that persists through resume)."""
    net = mlp(8, 3, 16, 2)
    with torch.no_grad():
        net[2].bias.fill_(-20.0)
    return net


def test_state_dict_round_trip(pkg: str, tmp_path: Path) -> None:
    x, y = blobs(n=8 * 5, features=8, classes=3, seed=9)
    cb = DiagnosticsCallback(schedule=1)
    assert cb.state_dict()["step"] == 0
    run = fit(pkg, make_module(pkg, mlp(8, 3, 16, 1)), loader(x, y, 8), [cb], tmp_path)
    state = cb.state_dict()
    assert state["step"] == run.global_step == 5
    assert state["run_dir"] == cb.log_dir

    restored = DiagnosticsCallback(schedule=1)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    fit(pkg, make_module(pkg, mlp(8, 3, 16, 1)), loader(x, y, 8), [restored], tmp_path / "again")
    assert restored.log_dir == cb.log_dir, "the run store continues the same run"
    assert loss_steps(restored.history) == list(range(10)), "numbering continues; earlier steps read back"
    assert restored.state_dict()["step"] == 10


def test_resume_continues_the_same_run_and_drops_redone_steps(pkg: str, tmp_path: Path) -> None:
    """Checkpoint at step 6 of a run that went on to 12: the resumed run redoes 6..11 without duplicates."""
    x, y = blobs(n=8 * 6, features=8, classes=3, seed=10)
    schedule = lambda s: s % 4 == 0  # noqa: E731
    first = DiagnosticsCallback(schedule=schedule)
    saver = SaveAt(pkg, 6, tmp_path / "at6.ckpt")
    trainer(pkg, tmp_path / "a", [first, saver.callback], 2).fit(make_module(pkg, mlp(8, 3, 16, 1)), loader(x, y, 8))
    assert first.session is not None and first.session.step == 12
    first_facts = load_run(first.log_dir).facts

    second = DiagnosticsCallback(schedule=schedule)
    t2 = trainer(pkg, tmp_path / "b", [second], 3)
    t2.fit(make_module(pkg, mlp(8, 3, 16, 1)), loader(x, y, 8), ckpt_path=str(saver.path))
    assert t2.global_step == 18
    assert second.log_dir == first.log_dir
    stored = load_run(second.log_dir)
    h = stored.history
    assert loss_steps(h) == list(range(18)), "one loss per step: steps 6-11 of the first fit were dropped"
    assert act_steps(h) == [0, 4, 8, 12, 16], "the schedule continues on the global numbering"
    assert not h.duplicated(["step", "layer", "stat"]).any()
    assert stored.meta["status"] == "finished"
    assert stored.facts["init"] == first_facts["init"], "the original run's initial weights are kept"
    assert stored.facts["resumed_at"] == 6


def test_resume_elsewhere_starts_a_new_store_that_says_so(pkg: str, tmp_path: Path) -> None:
    """The original run directory is gone (another machine): a new store, marked ``resumed_from``."""
    x, y = blobs(n=8 * 6, features=8, classes=3, seed=11)
    first = DiagnosticsCallback(schedule=2)
    t1 = trainer(pkg, tmp_path / "a", [first], 1)
    t1.fit(make_module(pkg, mlp(8, 3, 16, 1)), loader(x, y, 8))
    ckpt = tmp_path / "end.ckpt"
    t1.save_checkpoint(ckpt)
    old_dir = first.log_dir
    assert old_dir is not None
    shutil.rmtree(old_dir)

    second = DiagnosticsCallback(schedule=2, num_classes=3)
    trainer(pkg, tmp_path / "b", [second], 2).fit(
        make_module(pkg, mlp(8, 3, 16, 1)), loader(x, y, 8), ckpt_path=str(ckpt)
    )
    assert second.log_dir is not None and second.log_dir != old_dir
    stored = load_run(second.log_dir)
    assert stored.meta["resumed_from"] == {"run_dir": old_dir, "step": 6}
    assert loss_steps(stored.history) == list(range(6, 12))
    assert stored.facts["init"] == {}, "trained weights are not taken for initial ones"
    codes = {d.code for d in second.diagnoses}
    assert "initial_loss_off" not in codes, "a loss at step 6 is not an initial loss"


def test_open_diagnoses_survive_the_checkpoint(pkg: str, tmp_path: Path) -> None:
    x, y = blobs(n=8 * 6, features=8, classes=3, seed=12)
    first = DiagnosticsCallback(schedule=1)
    t1 = trainer(pkg, tmp_path / "a", [first], 1)
    t1.fit(make_module(pkg, dead_mlp()), loader(x, y, 8))
    dead = [d for d in first.diagnoses if d.code == "dead_units" and not d.resolved]
    assert dead, [d.headline() for d in first.diagnoses]
    ckpt = tmp_path / "dead.ckpt"
    t1.save_checkpoint(ckpt)

    state = torch.load(ckpt, weights_only=False)["callbacks"]
    saved = next(v for k, v in state.items() if "DiagnosticsCallback" in k)
    assert {(d["code"], d["layer"]) for d in saved["diagnoses"]} >= {(d.code, d.layer) for d in dead}

    second = DiagnosticsCallback(schedule=1)
    trainer(pkg, tmp_path / "b", [second], 2).fit(make_module(pkg, dead_mlp()), loader(x, y, 8), ckpt_path=str(ckpt))
    again = {(d.code, d.layer): d for d in second.diagnoses}
    for d in dead:
        now = again[(d.code, d.layer)]
        assert now.step == d.step, "still dated from the first run"
        assert now.count > d.count and not now.resolved


def test_restored_diagnosis_that_no_longer_holds_resolves(tmp_path: Path) -> None:
    """A plain loop resumed with a diagnosis the healthy model does not show: it is marked resolved."""
    x, y = blobs(n=64, features=8, classes=3, seed=13)
    model = mlp(8, 3, 16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stale = Diagnosis("dead_units", "warning", 2, "1", "old", last_step=4, count=3)
    state = {"nndiag_state_version": 2, "step": 5, "run_dir": None, "diagnoses": [stale.to_dict()]}
    with Monitor(model, opt, log_dir=tmp_path, schedule=1, resume=state) as mon:
        assert mon.diagnoses[0].headline() == stale.headline()
        for i in range(40):
            xb, yb = x[(i % 8) * 8 : (i % 8) * 8 + 8], y[(i % 8) * 8 : (i % 8) * 8 + 8]
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
    assert mon.steps == 45
    resolved = {(d.code, d.layer): d.resolved for d in mon.diagnoses}
    assert resolved[("dead_units", "1")] is True
    assert mon.state_dict()["step"] == 45


def test_monitor_state_dict_resumes_in_the_same_run(tmp_path: Path) -> None:
    x, y = blobs(n=64, features=8, classes=3, seed=14)
    model = mlp(8, 3, 16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def train(mon: Monitor, steps: int) -> None:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x[:16]), y[:16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)

    with Monitor(model, opt, log_dir=tmp_path, schedule=1) as first:
        train(first, 7)
        state = first.state_dict()
    with Monitor(model, opt, log_dir=tmp_path, schedule=1, resume=state) as second:
        train(second, 5)
    assert second.log_dir == first.log_dir
    assert loss_steps(load_run(second.log_dir).history) == list(range(12))


@pytest.mark.parametrize(
    "state",
    [
        pytest.param({"step": -3}, id="negative-step"),
        pytest.param({"step": "7"}, id="string-step"),
        pytest.param([7], id="not-a-dict"),
    ],
)
def test_monitor_rejects_a_bad_resume_state(state: Any) -> None:
    model = mlp(8, 3, 16, 1)
    with pytest.raises(ValueError, match="resume"):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), log_dir=None, resume=state)
