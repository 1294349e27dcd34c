"""``nndiag report``: healthy, faulty, killed and hostile runs; formats, schema, comparison, bad input."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import jsonschema
import pytest
from report_runs import HOSTILE, killed_run, train_blobs

from nndiag.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_PROBLEMS, main
from nndiag.report import COMPARISON_SCHEMA, REPORT_SCHEMA, build_report, write_report
from nndiag.store import STORE_FILENAME, load_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_runs")
    return {
        "healthy": train_blobs(root / "healthy", lr=0.05),
        "dead": train_blobs(root / "dead", lr=0.05, bias=-4.0),
        "diverging": train_blobs(root / "diverging", lr=20.0, steps=60),
        "killed": killed_run(root / "killed"),
        "hostile": train_blobs(root / "hostile", lr=0.05, bias=-4.0, steps=40, hostile=True),
    }


def report(run_dir, tmp_path, *args):
    out = tmp_path / "out"
    code = main(["report", run_dir, "--out", str(out), *args])
    return code, out


def test_healthy_run_says_healthy(runs, tmp_path, capsys):
    code, out = report(runs["healthy"], tmp_path, "--fail-on", "warning")
    assert code == EXIT_OK
    doc = json.loads((out / "nndiag-report.json").read_text())
    jsonschema.validate(doc, REPORT_SCHEMA)
    assert doc["verdict"]["state"] == "healthy" and doc["verdict"]["complete"]
    assert [d for d in doc["diagnoses"] if d["severity"] != "info"] == []
    html = (out / "nndiag-report.html").read_text()
    assert "Healthy" in html and 'class="verdict healthy"' in html
    assert html.count("data:image/png;base64,") >= 5  # loss, heatmaps, depth pictures
    md = (out / "nndiag-report.md").read_text()
    assert "**Verdict: Healthy" in md
    assert "html: " in capsys.readouterr().out


def test_faulty_run_lists_the_fault_with_its_fix(runs, tmp_path):
    code, out = report(runs["dead"], tmp_path, "--fail-on", "warning")
    assert code == EXIT_PROBLEMS
    doc = json.loads((out / "nndiag-report.json").read_text())
    jsonschema.validate(doc, REPORT_SCHEMA)
    assert doc["verdict"]["state"] == "problems"
    first = doc["diagnoses"][0]
    assert (first["code"], first["layer"]) == ("dead_units", "1")
    html = (out / "nndiag-report.html").read_text()
    assert 'class="verdict warnings"' in html
    assert "dead_units" in html and first["suggestions"][0].replace("'", "&#x27;") in html
    md = (out / "nndiag-report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| warning | dead\\_units | 1 |")]
    assert len(table) == 1


def test_diverging_run_is_an_error_and_fails_on_error(runs, tmp_path):
    code, out = report(runs["diverging"], tmp_path, "--fail-on", "error")
    assert code == EXIT_PROBLEMS
    doc = json.loads((out / "nndiag-report.json").read_text())
    assert doc["verdict"]["worst"] == "error"
    codes = {d["code"] for d in doc["diagnoses"]}
    assert codes & {"nonfinite_loss", "loss_diverging", "lr_too_high"}
    assert doc["overview"]["first_nonfinite_loss_step"] is None or doc["overview"]["first_nonfinite_loss_step"] >= 0
    assert 'class="verdict problems"' in (out / "nndiag-report.html").read_text()


def test_without_fail_on_problems_still_exit_zero(runs, tmp_path):
    code, _ = report(runs["dead"], tmp_path)
    assert code == EXIT_OK


def test_killed_run_reports_what_it_has(runs, tmp_path, capsys):
    code, out = report(runs["killed"], tmp_path)
    assert code == EXIT_OK
    doc = json.loads((out / "nndiag-report.json").read_text())
    jsonschema.validate(doc, REPORT_SCHEMA)
    assert doc["run"]["status"] == "running" and not doc["verdict"]["complete"]
    assert "did not finish" in doc["verdict"]["headline"]
    assert doc["overview"]["optimizer_steps"] >= 30
    assert "did not finish" in capsys.readouterr().out
    assert 'class="verdict incomplete"' in (out / "nndiag-report.html").read_text()


def test_model_supplied_strings_are_escaped(runs, tmp_path):
    code, out = report(runs["hostile"], tmp_path)
    assert code == EXIT_OK
    html = (out / "nndiag-report.html").read_text()
    assert HOSTILE not in html and "<img src=x" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    md = (out / "nndiag-report.md").read_text()
    assert "<img" not in md and "\\|\\`\\*\\_" in md
    doc = json.loads((out / "nndiag-report.json").read_text())
    assert HOSTILE in [layer["name"] for layer in doc["layers"]]  # JSON keeps the real name


def test_comparison_shows_problems_that_appear(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["report", runs["healthy"], runs["dead"], runs["diverging"], "--out", str(out), "--fail-on", "error"])
    assert code == EXIT_PROBLEMS  # the diverging run has an error
    doc = json.loads((out / "nndiag-comparison.json").read_text())
    jsonschema.validate(doc, COMPARISON_SCHEMA)
    assert len(doc["runs"]) == 3
    assert "dead_units [1]" in doc["changes"][0]["appeared"]
    assert doc["changes"][0]["disappeared"] == []
    html = (out / "nndiag-comparison.html").read_text()
    assert "Loss curves" in html and "dead_units [1]" in html
    md = (out / "nndiag-comparison.md").read_text()
    assert "appeared: dead\\_units \\[1\\]" in md
    reverse = tmp_path / "rev"
    assert main(["report", runs["dead"], runs["healthy"], "--out", str(reverse), "--format", "json"]) == EXIT_OK
    back = json.loads((reverse / "nndiag-comparison.json").read_text())
    assert "dead_units [1]" in back["changes"][0]["disappeared"]


def test_report_defaults_to_the_run_directory_and_selected_formats(runs, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(runs["healthy"], run)
    assert main(["report", str(run), "--format", "md"]) == EXIT_OK
    assert sorted(p.name for p in run.glob("nndiag-report.*")) == ["nndiag-report.md"]


def corrupt(p: Path) -> Path:
    (p / STORE_FILENAME).write_bytes(b"garbage" * 100)
    return p


def foreign(p: Path) -> Path:
    sqlite3.connect(p / STORE_FILENAME).execute("CREATE TABLE x (a)").connection.commit()
    return p


@pytest.mark.parametrize(
    ("make", "args", "needle"),
    [
        pytest.param(lambda p: p / "missing", (), "does not exist", id="missing_dir"),
        pytest.param(lambda p: p, (), "holds no nndiag run", id="not_a_run"),
        pytest.param(corrupt, (), "not a readable nndiag run store", id="corrupt_store"),
        pytest.param(foreign, (), "not an nndiag run store", id="foreign_sqlite"),
        pytest.param(lambda p: p, ("--format", "pdf"), "unknown report format", id="bad_format"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make, args, needle):
    target = make(tmp_path)
    assert main(["report", str(target), *args]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unwritable_output_is_bad_input(runs, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["report", runs["healthy"], "--out", str(blocker / "sub")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("nndiag: ") and "Traceback" not in err


def test_report_of_a_thinned_long_history_keeps_first_and_last(runs):
    full = load_run(runs["healthy"])
    thin = load_run(runs["healthy"], max_steps=5)
    layer_steps = sorted(thin.history[thin.history.layer == "1"].step.unique())
    all_steps = sorted(full.history[full.history.layer == "1"].step.unique())
    assert len(layer_steps) == 5 and layer_steps[0] == all_steps[0] and layer_steps[-1] == all_steps[-1]
    loss = thin.history[thin.history.stat == "loss"]
    assert len(loss) == len(full.history[full.history.stat == "loss"])  # run-wide series whole
    r = build_report(runs["healthy"], max_steps=5)
    assert r.matrix("act_std").values.shape[1] == 5


def test_schema_document_in_docs_matches_the_code():
    doc = json.loads((ROOT / "docs" / "report-schema.json").read_text())
    assert doc == {"report": REPORT_SCHEMA, "comparison": COMPARISON_SCHEMA}


def test_write_report_api_returns_paths(runs, tmp_path):
    paths = write_report(runs["dead"], tmp_path, formats=("html",))
    assert list(paths) == ["html"] and paths["html"].stat().st_size > 10_000
