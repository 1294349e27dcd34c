"""``nndiag preflight``: a model factory in a script, exit codes 0/1/2, JSON output, one-line errors."""

from __future__ import annotations

import json
import textwrap

import pytest

from nndiag.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_PROBLEMS, main

SCRIPT = textwrap.dedent(
    """
    import torch
    from torch import nn

    def _model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))

    def _data(scale=1.0, shift=0.0):
        g = torch.Generator().manual_seed(1)
        return torch.randn(64, 20, generator=g) * scale + shift, torch.randint(0, 4, (64,), generator=g)

    def healthy():
        return _model(), _data(), nn.CrossEntropyLoss()

    def unnormalised():
        return {"model": _model(), "batch": _data(100.0, 50.0), "loss_fn": nn.CrossEntropyLoss()}

    def model_only():
        return _model()

    def batch():
        return _data()

    def broken():
        raise RuntimeError("boom")

    def not_a_model():
        return 42

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(SCRIPT)
    return path


def test_healthy_model_exits_0_and_prints_the_table(script, capsys):
    assert main(["preflight", f"{script}:healthy"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "layer" in out and "ReLU" in out and "diagnoses: none" in out
    assert "overfit one batch: passed" in out


def test_json_output_parses(script, capsys):
    assert main(["preflight", f"{script}:healthy", "--json", "--no-overfit"]) == EXIT_OK
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is True and payload["overfit"] is None and payload["num_classes"] == 4
    assert [row["kind"] for row in payload["table"]] == ["Linear", "ReLU", "Linear"]


def test_problem_exits_1_unless_below_fail_on(script, capsys):
    assert main(["preflight", f"{script}:unnormalised", "--no-overfit"]) == EXIT_PROBLEMS
    assert "input_not_normalized" in capsys.readouterr().out
    assert main(["preflight", f"{script}:unnormalised", "--no-overfit", "--fail-on", "error"]) == EXIT_OK


def test_model_with_separate_batch_and_named_loss(script, capsys):
    args = ["preflight", f"{script}:model_only", "--batch", f"{script}:batch", "--loss", "cross_entropy"]
    assert main(args) == EXIT_OK
    assert "initial loss:" in capsys.readouterr().out


def test_importable_module_target(script, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(script.parent))
    assert main(["preflight", "models:healthy", "--no-overfit"]) == EXIT_OK


@pytest.mark.parametrize(
    ("target", "extra", "phrase"),
    [
        pytest.param("missing.py:make", [], "no such file", id="missing_file"),
        pytest.param("{script}:broken", [], "raised RuntimeError: boom", id="factory_raises"),
        pytest.param("{script}:not_a_model", [], "expected an nn.Module", id="not_a_model"),
        pytest.param("{script}:NOT_CALLABLE", [], "not a callable", id="not_callable"),
        pytest.param("{script}:nothing", [], "has no attribute", id="missing_function"),
        pytest.param("{script}:model_only", [], "--batch", id="model_without_batch"),
        pytest.param("{script}:healthy", ["--loss", "hinge"], "--loss", id="unknown_loss"),
        pytest.param("no_colon", [], "script.py:function", id="bad_target_syntax"),
        pytest.param("no_such_module_xyz:make", [], "cannot import", id="unknown_module"),
    ],
)
def test_bad_input_exits_2_with_one_line(script, capsys, target, extra, phrase):
    assert main(["preflight", target.format(script=script), *extra]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == ""
    assert len(err.splitlines()) == 1 and err.startswith("nndiag: ") and "Traceback" not in err
    assert phrase in err
