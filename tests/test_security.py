"""Security: nothing a model, a run store or a study holds can inject markup, run code, or pick paths.

* Model-supplied strings (module names, class names, hyperparameters, folder names, and the
  diagnosis messages that quote them) are escaped in every HTML page (run report, comparison, sweep,
  preflight ``_repr_html_``), in the Markdown report and in TensorBoard's diagnoses table, and shown
  as visible escapes on the terminal. Checked by parsing each output, not by searching for one string.
* Loading a run or a sweep never unpickles (unpickling is made to raise while every loader and
  renderer runs; the source is also scanned for pickle, eval and friends).
* SQL is parameterised: names that are SQL read back intact, and every ``execute`` in nndiag is
  checked to build its SQL from constants only.
* Paths found in a run (its metadata, a study's attributes, links planted in its folder) never decide
  what nndiag reads or where it writes.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import re
import sqlite3
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import markdown
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugin_util import markdown_to_safe_html
from torch import nn

import nndiag
from nndiag import Diagnosis, Monitor, load_run
from nndiag.cli import main
from nndiag.commands import EXIT_BAD_INPUT, EXIT_OK
from nndiag.render.page import page
from nndiag.report.write import write_comparison, write_report
from nndiag.rows import Rows
from nndiag.store.reader import CorruptRunError
from nndiag.store.writer import RunStore
from nndiag.sweep import analyze, load_sweep, render_html

# -- hostile strings -------------------------------------------------------------------------------------------
# nn.Module names may hold anything but "." (and may not be empty): each of these is a real module name below.
N_IN = '<script>alert("in")</script>'
N_ACT = "relu|col`tick`\n| injected | row |\n[x](javascript:alert(1)) &amp; \"q\" 'a' **b** _c_ # h"
N_SQL = "'); DROP TABLE series; --"
N_MATH = "a$\\frac{$b"  # matplotlib would parse this as a (broken) formula
N_ESC = "term\x1b]0;pwned\x07\r\x1b[2Jx"  # terminal escape sequences
N_OUT = '<img src=x onerror="alert(1)">'
NAMES = (N_IN, N_ACT, N_SQL, N_MATH, N_ESC, N_OUT)
CLASS_NAME = "<svg onload=alert('cls')>"  # a module class name (the report's "kind" column)
MODEL_CLASS = "<iframe src=javascript:alert(2)>"  # the model's class name (the report header)
LR_KEY = "<b>lr</b>|`x`$\\frac{$"  # searched in the sweep: an axis label of its plot
HPARAMS = {
    LR_KEY: 0.05,
    "opt": {"name": "<script>alert('hp')</script>", "note": "[y](javascript:alert(3))"},
    "data_dir": "../../victim",
}
# folder names reach page titles and the comparison's legend
RUN_FOLDER = "run <b onclick=\"alert(1)\"> 'y' & $\\undefinedmacro$"

EvilReLU = type(CLASS_NAME, (nn.ReLU,), {})


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(
            {
                N_IN: nn.Linear(20, 64),
                N_ACT: EvilReLU(),
                N_SQL: nn.Linear(64, 64),
                N_MATH: nn.ReLU(),
                N_ESC: nn.Linear(64, 32),
                N_OUT: nn.Linear(32, 4),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.blocks.values():
            x = module(x)
        return x


HostileNet = type(MODEL_CLASS, (_Net,), {})


def hostile_model() -> nn.Module:
    torch.manual_seed(0)
    model = HostileNet()
    nn.init.constant_(model.blocks[N_IN].bias, -4.0)  # most units after N_ACT never activate: dead_units names it
    return model


def train_hostile(root: Path, lr: float, steps: int = 40, report: bool = False) -> str:
    model = hostile_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 20, generator=gen), torch.randint(0, 4, (256,), generator=gen)
    hparams = {**HPARAMS, LR_KEY: lr}
    with Monitor(model, opt, log_dir=root, schedule=1, report=report, hparams=hparams) as mon:
        for step in range(steps):
            idx = torch.randint(0, 256, (32,), generator=gen)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss.detach())
            if step % 10 == 9:
                mon.record("val_loss", float(loss.detach()))
    assert any(d.layer == f"blocks.{N_ACT}" for d in mon.diagnoses), mon.diagnoses  # hostile text in a diagnosis
    return str(mon.log_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hostile") / RUN_FOLDER
    return {
        "a": train_hostile(root, lr=0.05, report=True),  # the session's own end-of-run report too
        "b": train_hostile(root, lr=0.01),
        "root": str(root),
    }


def layer_names() -> list[str]:
    return [f"blocks.{n}" for n in NAMES]


# -- checking HTML ---------------------------------------------------------------------------------------------
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4", "div", "span", "p", "ul", "li",
    "b", "i", "code", "table", "thead", "tbody", "tr", "th", "td", "figure", "img", "figcaption", "footer", "br",
}  # fmt: skip
ALLOWED_ATTRS = {"class", "id", "title", "src", "alt", "lang", "charset", "name", "content", "http-equiv"}


class Elements(HTMLParser):
    """Every element, attribute and text node of a page, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.text: list[str] = []
        self.cells: list[list[str]] = []  # rows of <td>/<th> texts (Markdown tables rendered to HTML)
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        if tag == "tr":
            self.cells.append([])
        elif tag in ("td", "th") and self.cells:
            self.cells[-1].append("")
            self._in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_cell:
            self.cells[-1][-1] += data


def parse(html: str) -> Elements:
    p = Elements()
    p.feed(html)
    p.close()
    return p


def assert_inert_html(html: str, shown: list[str], tags: set[str] = ALLOWED_TAGS) -> Elements:
    """No element, attribute or link came from the data; every string in ``shown`` appears as plain text."""
    doc = parse(html)
    assert set(doc.tags) <= tags, set(doc.tags) - tags
    for tag, name, value in doc.attrs:
        assert name in ALLOWED_ATTRS, (tag, name, value)
        if name == "src":
            assert tag == "img" and (value or "").startswith("data:image/png;base64,"), value
    text = "".join(doc.text)
    for s in shown:
        assert s in text, f"{s!r} is not shown as text (dropped, or escaped twice)"
    return doc


# -- checking Markdown -----------------------------------------------------------------------------------------
TABLE_TAGS = {"table", "thead", "tbody", "tr", "th", "td"}


def unescaped_pipes(line: str) -> int:
    n, i = 0, 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        n += line[i] == "|"
        i += 1
    return n


def one_line(s: str) -> str:
    """How a Markdown table cell shows a name: line breaks become spaces (a row stays one row)."""
    return s.replace("\r", " ").replace("\n", " ")


def assert_inert_markdown(md: str, shown: list[str]) -> None:
    """Raw HTML never passes through; tables keep their columns; hostile text renders as itself, once escaped."""
    assert "<" not in md, "raw HTML in the Markdown (a renderer that allows HTML would run it)"
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            width = unescaped_pipes(lines[i - 1])
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert unescaped_pipes(lines[j]) == width, lines[j]
                j += 1
    # Python-Markdown (TensorBoard's renderer) passes raw HTML through unsanitised: nothing may come out of the data
    rendered = markdown.markdown(md, extensions=["tables"])
    tags = {"h1", "h2", "p", "strong", "ul", "li"} | TABLE_TAGS
    doc = assert_inert_html(rendered, [one_line(s) for s in shown], tags=tags)
    assert "&lt;" not in "".join(doc.text)  # escaped exactly once (N_ACT's literal "&amp;" must show as itself)


# -- markup ----------------------------------------------------------------------------------------------------
def test_run_report_html_markdown_json_are_inert(runs, tmp_path):
    out = tmp_path / "out"
    paths = write_report(runs["a"], out)
    html = paths["html"].read_bytes().decode("utf-8")
    shown = [*layer_names(), CLASS_NAME, MODEL_CLASS, *HPARAMS, "opt.name", HPARAMS["opt"]["name"], RUN_FOLDER]  # type: ignore[index]
    doc = assert_inert_html(html, shown)
    assert doc.tags.count("img") >= 5  # the pictures were drawn despite N_MATH in the tick labels
    text = "".join(doc.text)
    assert f"blocks.{N_ACT}" in text and "dead_units" in text
    md = paths["md"].read_bytes().decode("utf-8")
    assert_inert_markdown(md, [*layer_names(), RUN_FOLDER])
    doc_json = json.loads(paths["json"].read_bytes().decode("utf-8"))
    assert set(layer_names()) <= {layer["name"] for layer in doc_json["layers"]}  # JSON keeps the real names
    auto = Path(runs["a"]) / "nndiag-report.html"  # written by the session at the end of training
    assert_inert_html(auto.read_bytes().decode("utf-8"), layer_names())


def test_markdown_diagnoses_table_has_one_row_per_diagnosis(runs, tmp_path):
    md = write_report(runs["a"], tmp_path, formats=("md",))["md"].read_bytes().decode("utf-8")
    loaded = load_run(runs["a"])
    section = md.split("## Diagnoses")[1].split("\n## ")[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    rows = parse(markdown.markdown(table, extensions=["tables"])).cells
    assert len(rows) == 1 + len(loaded.diagnoses)  # header + one row each: no row injected by a name
    assert all(len(r) == 7 for r in rows)
    layers = {r[2] for r in rows[1:]}
    assert one_line(f"blocks.{N_ACT}") in layers


def test_comparison_html_and_markdown_are_inert(runs, tmp_path):
    paths = write_comparison([runs["a"], runs["b"]], tmp_path)
    assert_inert_html(paths["html"].read_bytes().decode("utf-8"), [f"blocks.{N_ACT}", RUN_FOLDER])
    assert_inert_markdown(paths["md"].read_bytes().decode("utf-8"), [RUN_FOLDER])


def test_sweep_html_is_inert(runs, tmp_path):
    html = render_html(analyze(load_sweep(runs["root"])))
    assert_inert_html(html, [LR_KEY, RUN_FOLDER])
    out = tmp_path / "sweep.html"
    assert main(["sweep", runs["root"], "--html", str(out)]) == EXIT_OK
    doc = assert_inert_html(out.read_bytes().decode("utf-8"), [LR_KEY])
    assert "img" in doc.tags  # the objective plot was drawn


def test_preflight_repr_html_is_inert():
    report = nndiag.preflight(hostile_model(), (torch.randn(32, 20), torch.randint(0, 4, (32,))), overfit=False)
    report.diagnoses.append(Diagnosis("dead_units", "warning", 0, N_OUT, f"message about {N_IN}", {}, [N_ACT]))
    html = report._repr_html_()
    assert_inert_html(html, [*layer_names(), CLASS_NAME, N_IN, N_OUT])


def test_page_escapes_its_title():
    html = page(N_IN, "<p>body</p>")
    doc = assert_inert_html(html, [N_IN])
    assert doc.tags.count("title") == 1 and "script" not in doc.tags


def diagnosis_tables(run_dir: str) -> list[str]:
    acc = EventAccumulator(run_dir, size_guidance={"tensors": 0})
    acc.Reload()
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("nndiag/diagnoses/text_summary")]


def test_tensorboard_diagnoses_text_is_inert(runs):
    tables = diagnosis_tables(runs["a"])
    assert tables
    hostile_seen = False
    for body in tables:
        assert "<" not in body  # raw HTML never reaches TensorBoard's renderer
        table, notes = body.split("\n\n")  # the table of short fields, then one numbered note per diagnosis
        lines = table.splitlines()
        assert all(unescaped_pipes(line) == 7 for line in lines), body  # 6 cells each: no cell or row injected
        assert all(unescaped_pipes(line) == 0 for line in notes.splitlines()), body
        assert len(notes.splitlines()) == len(lines) - 2  # one note line per diagnosis: no line injected
        doc = parse(markdown.markdown(body, extensions=["tables"]))
        assert set(doc.tags) <= TABLE_TAGS | {"ol", "li"}  # no link, image, code, emphasis or script from a name
        assert len(doc.cells) == len(lines) - 1 and all(len(row) == 6 for row in doc.cells)
        safe = parse(markdown_to_safe_html(body))  # what TensorBoard actually shows
        assert not [a for a in safe.attrs if a[1] in ("href", "src") or a[1].startswith("on")]
        hostile_seen |= one_line(f"blocks.{N_ACT}") in [row[3] for row in doc.cells]
    assert hostile_seen


def test_cli_text_cannot_drive_the_terminal(runs, capsys):
    for args in (["show", runs["a"]], ["diagnose", runs["a"]], ["report", runs["a"], "--format", "json"]):
        assert main(args) == EXIT_OK
        out = capsys.readouterr().out
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f]", out), args  # no ESC, BEL, CR ...
    assert main(["show", runs["a"]]) == EXIT_OK
    assert "term\\x1b]0;pwned\\x07" in capsys.readouterr().out  # shown as a visible escape instead


# -- no unpickling ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def forbid(name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} called while loading a run")

        return refuse

    for mod, attr in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load"), (np, "load")):
        monkeypatch.setattr(mod, attr, forbid(f"{mod.__name__}.{attr}"))
    return calls


def test_loading_and_reporting_never_unpickle(runs, tmp_path, no_unpickling, capsys):
    loaded = load_run(runs["a"])
    assert set(layer_names()) <= set(loaded.history.layer)
    write_report(runs["a"], tmp_path / "one")
    write_comparison([runs["a"], runs["b"]], tmp_path / "two")
    for args in (
        ["show", runs["a"]],
        ["diagnose", runs["a"], "--json"],
        ["report", runs["a"], "--out", str(tmp_path / "three")],
        ["sweep", runs["root"], "--json"],
    ):
        assert main(args) == EXIT_OK, capsys.readouterr().err
    assert no_unpickling == []


def test_optuna_study_loads_without_unpickling(tmp_path, monkeypatch):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    for i in range(6):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        trial.set_user_attr("nndiag_diagnoses", ["lr_too_high"] if i == 5 else [])
        study.tell(trial, float(i))
    calls: list[str] = []
    for mod, attr in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler")):
        monkeypatch.setattr(mod, attr, lambda *a, _n=f"pickle.{attr}", **k: calls.append(_n))
    sweep = load_sweep(url, "s")  # Optuna's RDB storage: JSON columns, no pickle
    assert len(sweep.trials) == 6 and sweep.trials[5].diagnoses == ("lr_too_high",)
    assert calls == []


UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "yaml"}
UNSAFE_ATTRS = {("torch", "load"), ("np", "load"), ("numpy", "load"), ("pd", "read_pickle"), ("yaml", "load")}
# the one deliberate exception: `nndiag preflight script.py:make` runs the user's own script (like `python script.py`)
ALLOWED = {("nndiag/commands/preflight.py", "exec_module")}


def test_no_unpickling_or_eval_anywhere_in_nndiag():
    root = Path(nndiag.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root.parent))
        tree = ast.parse(path.read_bytes().decode("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(rel, a.name) for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
                found.append((rel, node.module or ""))
            elif isinstance(node, ast.Call):
                fn = node.func
                if isinstance(fn, ast.Name) and fn.id in UNSAFE_CALLS:
                    found.append((rel, fn.id))
                elif isinstance(fn, ast.Attribute):
                    base = fn.value.id if isinstance(fn.value, ast.Name) else ""
                    if (base, fn.attr) in UNSAFE_ATTRS or fn.attr == "exec_module":
                        found.append((rel, fn.attr))
                for kw in node.keywords:
                    if kw.arg == "allow_pickle":
                        found.append((rel, "allow_pickle"))
    assert set(found) <= ALLOWED, sorted(set(found) - ALLOWED)


# -- SQL -------------------------------------------------------------------------------------------------------
SQL = ["'); DROP TABLE series; --", '" OR 1=1; --', "x'; DELETE FROM scalars WHERE '1'='1", "Robert'); --"]


def test_sql_in_names_and_meta_reads_back_intact(tmp_path):
    store = RunStore(tmp_path, {SQL[0]: SQL[1], "hparams": {SQL[2]: SQL[3]}})
    layers = ["", *SQL]
    stats = ["loss", *reversed(SQL)]
    store.write_rows(Rows(np.arange(5), layers, stats, np.arange(5.0)))
    store.write_meta(SQL[3], {"k": SQL[0]})
    store.write_diagnoses([Diagnosis("dead_units", "warning", 3, SQL[0], SQL[1], {"x": 1.0}, [SQL[2]])])
    store.close()
    run = load_run(tmp_path)
    assert run.history.layer.tolist() == layers and run.history.stat.tolist() == stats
    assert run.history.value.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert run.meta[SQL[0]] == SQL[1] and run.meta["hparams"] == {SQL[2]: SQL[3]} and run.meta[SQL[3]] == {"k": SQL[0]}
    d = run.diagnoses[0]
    assert (d.layer, d.message, d.suggestions) == (SQL[0], SQL[1], [SQL[2]])
    thinned = load_run(tmp_path, max_steps=10).history  # the other read path (temporary table, IN lists)
    assert set(thinned.layer) == set(layers)
    with sqlite3.connect(tmp_path / "nndiag.sqlite") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "series", "scalars", "diagnoses"} <= tables


def test_sql_names_from_a_trained_model(runs):
    assert f"blocks.{N_SQL}" in set(load_run(runs["a"]).history.layer)


SQL_CALLS = {"execute", "executemany", "executescript", "read_sql_query", "read_sql"}
SAFE_FSTRING_NAMES = {"_SELECT", "marks"}  # a module constant; a string of "?" placeholders


def test_every_sql_statement_is_built_from_constants():
    """Values go in parameters: an f-string, ``%`` or ``.format`` carrying data into SQL fails this test."""
    root = Path(nndiag.__file__).parent
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(root.rglob("*.py"))}
    # names assigned only SQL built from constants, in any nndiag module (DDL is imported by the writer)
    assigns = [n for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.Assign) and len(n.targets) == 1]
    consts: set[str] = set()
    while True:
        grown = {
            n.targets[0].id for n in assigns if isinstance(n.targets[0], ast.Name) and _constant_sql(n.value, consts)
        } - consts
        if not grown:
            break
        consts |= grown
    checked, bad = 0, []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in SQL_CALLS or not node.args:
                continue
            checked += 1
            sql = node.args[0]
            if not _constant_sql(sql, consts):
                bad.append(f"{path.name}:{node.lineno}: {ast.unparse(sql)}")
    assert checked >= 20  # the store's reader and writer were found
    assert bad == []


def _constant_sql(node: ast.expr, consts: set[str]) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Name):
        return node.id in consts
    if isinstance(node, ast.JoinedStr):
        return all(
            isinstance(v, ast.Constant)
            or (
                isinstance(v, ast.FormattedValue)
                and isinstance(v.value, ast.Name)
                and (v.value.id in consts or v.value.id in SAFE_FSTRING_NAMES)
            )
            for v in node.values
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _constant_sql(node.left, consts) and _constant_sql(node.right, consts)
    return False


def test_in_list_placeholders_are_only_question_marks():
    from nndiag.store import reader

    source = Path(reader.__file__).read_bytes().decode("utf-8")
    assert re.search(r'marks = ",".join\("\?" \* len\(ids\)\)', source)
    query = r'query = f"SELECT DISTINCT step FROM scalars WHERE series IN \(\{marks\}\) ORDER BY step"'
    assert re.search(query, source)


# -- paths from a run are not trusted ----------------------------------------------------------------------------
def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its content (links by their target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = "link -> " + os.readlink(p)
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def crafted_run(run_dir: Path) -> None:
    """A run whose metadata points everywhere but its own folder."""
    elsewhere = "../../victim"
    store = RunStore(
        run_dir,
        {
            "log_dir": elsewhere,
            "report_dir": elsewhere,
            "report": {"html": f"{elsewhere}/nndiag-report.html", "md": "/tmp/evil.md"},
            "path": elsewhere,
            "hparams": {"lr": 0.1, "log_dir": elsewhere, "out": "/etc/passwd"},
        },
    )
    steps = np.repeat(np.arange(10), 2)
    layers = ["", "fc"] * 10
    stats = ["loss", "act_std"] * 10
    store.write_rows(Rows(steps, layers, stats, np.linspace(2.0, 1.0, 20)))
    store.write_meta("facts", {"log_dir": elsewhere, "forward_order": ["fc"], "layers": {"fc": {"kind": "linear"}}})
    store.close()


def test_metadata_paths_never_decide_where_nndiag_writes_or_reads(tmp_path, monkeypatch, capsys):
    sandbox = tmp_path / "sandbox"
    run = sandbox / "runs" / "exp" / "run"
    for victim in (sandbox / "victim", sandbox / "runs" / "victim", sandbox / "runs" / "exp" / "victim"):
        victim.mkdir(parents=True)
    crafted_run(run)
    cwd = sandbox / "cwd" / "here"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)  # ../../victim from here is sandbox/victim
    before = tree(sandbox)
    opened: list[str] = []
    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda db, *a, **k: opened.append(str(db)) or real_connect(db, *a, **k))

    out = sandbox / "out"
    assert main(["report", str(run), "--out", str(out)]) == EXIT_OK
    assert main(["report", str(run)]) == EXIT_OK  # default: the run's own folder
    assert main(["report", str(run), str(run), "--out", str(sandbox / "cmp"), "--format", "md"]) == EXIT_OK
    assert main(["show", str(run)]) == EXIT_OK
    assert main(["diagnose", str(run)]) == EXIT_OK
    assert main(["sweep", str(sandbox / "runs"), "--html", str(out / "sweep.html")]) == EXIT_OK
    capsys.readouterr()

    after = tree(sandbox)
    created = sorted(set(after) - set(before))
    expected = sorted(
        [f"out/nndiag-report.{f}" for f in ("html", "md", "json")]
        + [f"runs/exp/run/nndiag-report.{f}" for f in ("html", "md", "json")]
        + ["cmp/nndiag-comparison.md", "out/sweep.html"]
    )
    assert [c for c in created if not c.startswith("runs/exp/run/nndiag.sqlite-")] == expected
    assert {k: v for k, v in after.items() if k in before} == before  # nothing existing was changed
    assert not any("victim" in k for k in after)
    assert all("nndiag.sqlite" in db and "victim" not in db for db in opened), opened


def test_links_planted_in_a_run_folder_cannot_redirect_the_report(tmp_path):
    run = tmp_path / "run"
    crafted_run(run)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious", encoding="utf-8")
    (run / "nndiag-report.html.tmp").symlink_to(victim)  # the name a naive atomic write would open
    (run / "nndiag-report.md").symlink_to(victim)  # the final name: must be replaced, not written through
    assert main(["report", str(run), "--format", "html,md"]) == EXIT_OK
    assert victim.read_bytes().decode("utf-8") == "precious"
    assert not (run / "nndiag-report.md").is_symlink() and "nndiag report" in (run / "nndiag-report.md").read_text()
    assert (run / "nndiag-report.html").read_bytes().decode("utf-8").startswith("<!DOCTYPE html>")


def test_folder_names_cannot_change_which_database_is_opened(tmp_path):
    """A folder named ``x?mode=rwc#`` must not turn into SQLite URI parameters (opening or creating ``x``)."""
    run = tmp_path / "x?mode=rwc#" / "run"
    crafted_run(run)
    loaded = load_run(run)
    assert loaded.path == run / "nndiag.sqlite" and len(loaded.history) == 20
    assert not (tmp_path / "x").exists()


def test_study_attributes_cannot_make_nndiag_open_a_path(tmp_path, monkeypatch):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    elsewhere = tmp_path / "elsewhere"
    store = RunStore(elsewhere)
    store.write_diagnoses([Diagnosis("dead_units", "warning", 0, "fc", "...")])
    store.close()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    for i in range(4):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        trial.set_user_attr("nndiag_log_dir", str(elsewhere))  # no nndiag_diagnoses: only a path
        study.tell(trial, float(i))
    import nndiag.sweep.sources as sources

    monkeypatch.setattr(sources, "load_run", lambda *a, **k: pytest.fail(f"opened a stored path: {a}"))
    sweep = load_sweep(url, "s")
    assert [t.diagnoses for t in sweep.trials] == [()] * 4


def test_sweep_does_not_let_optuna_write_into_other_sqlite_files(tmp_path, capsys):
    pytest.importorskip("optuna")
    run = tmp_path / "run"
    crafted_run(run)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    copy = tmp_path / "copy-of-a-run.sqlite"
    copy.write_bytes((run / "nndiag.sqlite").read_bytes())
    for db in (other, copy):
        digest = hashlib.sha256(db.read_bytes()).hexdigest()
        assert main(["sweep", str(db)]) == EXIT_BAD_INPUT
        assert "Optuna" in capsys.readouterr().err
        assert hashlib.sha256(db.read_bytes()).hexdigest() == digest  # optuna created no tables in it


@pytest.mark.parametrize(
    "data",
    [
        '{"code": "x", "severity": "warning", "step": "7", "layer": null, "message": "m"}',
        '{"code": "x", "severity": "warning", "step": 7, "layer": ["a"], "message": "m"}',
        '{"code": "x", "severity": "warning", "step": 7, "layer": null, "message": "m", "suggestions": "abc"}',
        '{"code": "x", "severity": "fatal", "step": 7, "layer": null, "message": "m"}',
        "[1, 2]",
        "not json",
    ],
)
def test_crafted_diagnoses_are_refused_with_a_message(tmp_path, data, capsys):
    crafted_run(tmp_path)
    with sqlite3.connect(tmp_path / "nndiag.sqlite") as conn:
        conn.execute("INSERT INTO diagnoses (code, layer_key, step, data) VALUES ('x', '', 7, ?)", (data,))
    with pytest.raises(CorruptRunError, match="damaged"):
        load_run(tmp_path)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert "damaged" in capsys.readouterr().err


def test_crafted_meta_types_are_refused(tmp_path):
    crafted_run(tmp_path)
    with sqlite3.connect(tmp_path / "nndiag.sqlite") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'hparams'", (json.dumps(["lr", 0.1]),))
    with pytest.raises(CorruptRunError, match="hparams"):
        load_run(tmp_path)
