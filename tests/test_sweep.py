"""nndiag sweep: the analysis on synthetic studies with known answers, both sources, the CLI, HTML, parallel workers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from torch import nn

from nndiag import Monitor
from nndiag.cli import EXIT_BAD_INPUT, EXIT_OK, main
from nndiag.sweep import analyze, from_study, render_html

optuna.logging.set_verbosity(optuna.logging.WARNING)
LR = FloatDistribution(1e-5, 1e-1, log=True)
WD = FloatDistribution(1e-6, 1e-2, log=True)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def synthetic(objective, n=30, seed=0, grid=None, diverge_above=None, storage=None, name="s"):
    """A study of ``n`` random (or lr-grid) trials; objective(log10 lr, log10 wd, rng) -> value."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(storage=storage, study_name=name)
    trials = []
    for i in range(n):
        lr = grid[i % len(grid)] if grid else 10 ** rng.uniform(-5, -1)
        wd = 10 ** rng.uniform(-6, -2)
        params, dists = {"lr": lr, "wd": wd}, {"lr": LR, "wd": WD}
        if diverge_above is not None and lr > diverge_above:
            attrs = {"nndiag_diagnoses": ["loss_diverging", "lr_too_high"]}
            trials.append(create_trial(params=params, distributions=dists, state=TrialState.PRUNED, user_attrs=attrs))
        else:
            value = objective(np.log10(lr), np.log10(wd), rng)
            trials.append(create_trial(params=params, distributions=dists, value=value, user_attrs={}))
    study.add_trials(trials)
    return study


def interior(x, w, rng):  # optimum at lr = 1e-3, wd irrelevant
    return (x + 3) ** 2 + 0.1 * rng.normal()


def advice(report):
    return {p.name: p for p in report.params}


def test_best_at_low_border_is_flagged():
    study = synthetic(lambda x, w, rng: (x + 5) ** 2 + 0.01 * rng.normal())  # minimum at lr = 1e-5 = the low bound
    report = analyze(from_study(study))
    lr = advice(report)["lr"]
    assert lr.border_side == "low"
    assert lr.next_low is not None and lr.next_low < 1e-5 and lr.next_high <= 1e-1
    assert any("lr: best value on the border" in w and "widen the range below 1e-05" in w for w in report.warnings)
    assert advice(report)["wd"].border_side is None


def test_interior_optimum_no_border_and_next_range_contains_it():
    report = analyze(from_study(synthetic(interior)))
    lr = advice(report)["lr"]
    assert lr.border_side is None
    assert lr.next_low < 1e-3 < lr.next_high
    assert lr.next_low >= 1e-5 and lr.next_high <= 1e-1
    assert np.log10(lr.next_high / lr.next_low) < 3  # narrower than the 4 decades searched
    assert report.warnings == []


@pytest.mark.parametrize("seed", range(6))
def test_healthy_sweeps_give_no_warnings(seed):
    report = analyze(from_study(synthetic(interior, n=20 + 5 * seed, seed=seed)))
    assert report.warnings == []
    assert report.params[0].name == "lr"  # the irrelevant wd is ranked below lr
    assert advice(report)["lr"].effect > advice(report)["wd"].effect


def test_grid_on_the_important_parameter_is_warned_random_is_not():
    grid = analyze(from_study(synthetic(interior, n=20, grid=[1e-4, 1e-3, 1e-2])))
    assert any(w.startswith("lr matters most") and "3 distinct values in 20 trials" in w for w in grid.warnings)
    assert advice(grid)["lr"].grid and not advice(grid)["wd"].grid
    assert not any("distinct values" in w for w in analyze(from_study(synthetic(interior, n=20))).warnings)


def test_diagnoses_distribution_names_the_threshold():
    report = analyze(from_study(synthetic(interior, n=40, diverge_above=3e-2)))
    sentences = [s.sentence() for s in report.splits if s.param == "lr" and s.outcome == "loss_diverging"]
    assert len(sentences) == 1
    s = report.splits[[x.outcome for x in report.splits].index("loss_diverging")]
    assert 0.02 <= s.threshold <= 0.05 and s.above and s.hits_out == 0 and s.hits_in == s.n_in
    assert sentences[0].startswith(f"lr > {s.threshold:g}: {s.n_in} of {s.n_in} trials diverged; lr <= ")
    assert not [x for x in report.splits if x.param == "wd"]  # divergence does not depend on wd
    # pruned trials count as worst: lr stays the important parameter
    assert report.params[0].name == "lr"


def test_no_split_without_a_pattern():
    rng = np.random.default_rng(3)
    study = synthetic(interior, n=30)
    flaky = optuna.create_study()
    for t in study.trials:  # a diagnosis on random trials, unrelated to any parameter
        codes = ["dead_units"] if rng.uniform() < 0.3 else []
        flaky.add_trial(
            create_trial(
                params=t.params, distributions=t.distributions, value=t.value, user_attrs={"nndiag_diagnoses": codes}
            )
        )
    assert [x for x in analyze(from_study(flaky)).splits if x.outcome == "dead_units"] == []


def test_categorical_parameter_is_ranked_not_plotted():
    rng = np.random.default_rng(0)
    study = optuna.create_study()
    for _ in range(20):
        lr, opt = 10 ** rng.uniform(-5, -1), str(rng.choice(["adam", "sgd"]))
        dists = {"lr": LR, "opt": CategoricalDistribution(["adam", "sgd"])}
        study.add_trial(create_trial(params={"lr": lr, "opt": opt}, distributions=dists, value=(np.log10(lr) + 3) ** 2))
    report = analyze(from_study(study))
    assert advice(report)["opt"].kind == "categorical" and advice(report)["opt"].next_low is None
    assert render_html(report).count("<img") == 1


# -- CLI on Optuna storages --------------------------------------------------------------------------
def test_cli_reads_sqlite_study_json_and_html(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = synthetic(interior, storage=url, name="<script>alert(1)</script>")
    study.add_trial(
        create_trial(
            params={"<script>alert(1)</script>": 0.5},
            distributions={"<script>alert(1)</script>": FloatDistribution(0, 1)},
            value=3.0,
        )
    )
    html = tmp_path / "sweep.html"
    assert main(["sweep", url, "--json", "--html", str(html)]) == EXIT_OK  # the only study: no --study needed
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["total"] == 31 and doc["direction"] == "minimize"
    assert doc["best"][0]["value"] == min(t.value for t in study.trials)
    page = html.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'src="http' not in page and 'href="http' not in page and "https://" not in page
    assert page.count("<img") == 3  # one plot per numeric parameter: lr, wd and the malicious one
    assert main(["sweep", str(tmp_path / "study.db"), "--study", "<script>alert(1)</script>"]) == EXIT_OK  # a file
    assert "Best 4 trials:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(lambda p: [str(p / "missing")], "does not exist", id="missing_path"),
        pytest.param(lambda p: [str(p / "sub")], "holds no nndiag run", id="empty_folder"),
        pytest.param(lambda p: [f"sqlite:///{p / 'none.db'}"], "does not exist", id="missing_db"),
        pytest.param(lambda p: ["nosuchdb://x/y"], "cannot open the Optuna storage", id="bad_url"),
        pytest.param(lambda p: [f"sqlite:///{p / 's.db'}", "--study", "nope"], "no study named 'nope'", id="unknown"),
        pytest.param(lambda p: [f"sqlite:///{p / 's.db'}"], "holds 2 studies; pick one with --study", id="ambiguous"),
        pytest.param(lambda p: [str(p), "--top", "0"], "--top must be", id="bad_top"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(storage=url, study_name="a")
    optuna.create_study(storage=url, study_name="b")
    (tmp_path / "sub").mkdir()
    assert main(["sweep", *args(tmp_path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# -- run folders --------------------------------------------------------------------------------------
def _train(root, lr, hparams=True, steps=12):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    hp = {"lr": lr, "batch_size": 64} if hparams else None
    with Monitor(model, opt, log_dir=root, hparams=hp, tensorboard=False, report=False) as mon:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_runs")
    for lr in (1e-3, 1e-2, 1e-1, 0.5, 1e6):  # the last one explodes
        _train(root, lr)
    return root


def test_run_folder_json_finds_the_best(runs_folder, capsys):
    assert main(["sweep", str(runs_folder), "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["objective"] == "loss" and doc["counts"]["total"] == 5
    assert doc["counts"].get("failed") == 1
    failed = next(t for t in doc["trials"] if t["state"] == "failed")
    assert failed["params"]["lr"] == 1e6 and failed["value"] is None
    values = {t["params"]["lr"]: t["value"] for t in doc["trials"] if t["value"] is not None}
    assert doc["best"][0]["params"]["lr"] == min(values, key=values.get)
    assert doc["best"][0]["params"]["lr"] in (0.1, 0.5)  # 12 steps: the larger healthy rates get furthest
    lr = next(p for p in doc["params"] if p["name"] == "lr")
    assert lr["observed"] and lr["log"] and lr["low"] == 1e-3 and lr["high"] == 1e6
    assert not any(p["name"] == "batch_size" for p in doc["params"])  # fixed: not a searched parameter
    assert any("observed min/max" in n for n in doc["notes"])


def test_run_folder_bad_inputs(tmp_path, runs_folder, capsys):
    _train(tmp_path / "nohp", 0.1, hparams=False)
    assert main(["sweep", str(tmp_path / "nohp")]) == EXIT_BAD_INPUT
    assert "logged hyperparameters" in capsys.readouterr().err
    assert main(["sweep", str(runs_folder), "--objective", "val_acc"]) == EXIT_BAD_INPUT
    assert "recorded the stat 'val_acc'" in capsys.readouterr().err
    assert main(["sweep", str(runs_folder), "--study", "x"]) == EXIT_BAD_INPUT
    assert "drop --study" in capsys.readouterr().err


# -- parallel workers on one SQLite storage ----------------------------------------------------------
WORKER = textwrap.dedent(
    """
    import sys, optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="par", storage=sys.argv[1], load_if_exists=True)
    def objective(trial):
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        trial.suggest_float("wd", 1e-6, 1e-2, log=True)
        trial.set_user_attr("worker", sys.argv[2])
        return (__import__("math").log10(lr) + 3) ** 2
    study.optimize(objective, n_trials=int(sys.argv[3]))
    """
)


def test_parallel_workers_share_one_sqlite_study(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'par.db'}"
    optuna.create_study(study_name="par", storage=url)  # created once, before the workers race
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, url, str(w), "8"], stderr=subprocess.PIPE, text=True)
        for w in range(2)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    trials = optuna.load_study(study_name="par", storage=url).trials
    assert len(trials) == 16 and sorted(t.number for t in trials) == list(range(16))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["worker"] for t in trials} == {"0", "1"}
    assert main(["sweep", url, "--study", "par", "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"] == {"total": 16, "complete": 16}
    assert doc["params"][0]["name"] == "lr"


# -- the example ----------------------------------------------------------------------------------------
def test_hparam_search_example_runs_end_to_end(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("hparam_search", EXAMPLES / "hparam_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--out", str(tmp_path), "--coarse", "8", "--fine", "3", "--epochs", "1"])
    out = capsys.readouterr().out
    assert "Sweep coarse" in out and "fine stage: lr in [" in out and "best: val_loss" in out
    assert len(result["coarse"].trials) == 8 and len(result["fine"].trials) == 3
    coarse_lrs = [t.params["lr"] for t in result["coarse"].trials]
    assert min(coarse_lrs) <= result["lr_range"][0] < result["lr_range"][1] <= max(coarse_lrs) * 10
    assert all(result["lr_range"][0] <= t.params["lr"] <= result["lr_range"][1] for t in result["fine"].trials)
    pruned = [t for t in result["coarse"].trials if t.state == TrialState.PRUNED]
    assert all("nndiag_pruned" in t.user_attrs for t in pruned)  # only nndiag prunes in the example
    assert main(["sweep", result["storage"], "--study", "coarse"]) == EXIT_OK
