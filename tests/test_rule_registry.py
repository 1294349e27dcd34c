"""The rule registry owns every diagnosis code: derived tables, composed thresholds, docs kept equal."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from nndiag.advisor import BROKEN_CODES, CAUSE_ORDER, EXPLAINED_BY, Advisor
from nndiag.diagnosis import CODE_REGISTRY, DIAGNOSIS_CODES, Diagnosis
from nndiag.guard import ErrorGuard
from nndiag.integrations.optuna import PRUNE_CODES
from nndiag.rules import docs
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import RULES, rule, threshold_defaults
from nndiag.rules.view import RunView
from nndiag.sweep import BROKEN_CODES as SWEEP_BROKEN

ROOT = Path(__file__).resolve().parents[1]


def test_docs_code_table_equals_registry() -> None:
    text = (ROOT / "docs" / "rules.md").read_text()
    assert docs.with_table(text) == text, "docs/rules.md is stale: run python -m nndiag.rules.docs docs/rules.md"
    for code in RULES:
        assert f"| `{code}` |" in text


def test_derived_tables_cover_every_code() -> None:
    assert set(DIAGNOSIS_CODES) == set(RULES) == set(CAUSE_ORDER) == set(CODE_REGISTRY)
    assert len(CAUSE_ORDER) == len(set(CAUSE_ORDER))
    ranks = [RULES[c].rank for c in CAUSE_ORDER]
    assert ranks == sorted(ranks)
    for code, causes in EXPLAINED_BY.items():
        assert code in RULES and set(causes) <= set(RULES), code
        assert code not in causes
    assert BROKEN_CODES == PRUNE_CODES == SWEEP_BROKEN
    assert set(BROKEN_CODES) == {"nonfinite_loss", "loss_diverging", "lr_too_high"}


def test_every_rule_declares_a_summary_and_valid_severities() -> None:
    for code, spec in RULES.items():
        assert spec.summary, code
        assert spec.severities and set(spec.severities) <= {"info", "warning", "error"}, code
        assert dataclasses.is_dataclass(spec.thresholds), code


def test_config_is_composed_from_rule_thresholds() -> None:
    cfg = AdvisorConfig()
    names = {f.name for spec in RULES.values() for f in dataclasses.fields(spec.thresholds)}
    assert set(cfg.to_dict()) == names == set(threshold_defaults())
    dead = RULES["dead_units"].thresholds
    t = AdvisorConfig(dead_frac=0.7, sustained_checks=5).thresholds(dead)
    assert type(t) is dead and t.dead_frac == 0.7 and t.sustained_checks == 5
    # a shared threshold reaches every rule that reads it
    collapse = AdvisorConfig(dead_frac=0.7).thresholds(RULES["activation_collapse"].thresholds)
    assert collapse.dead_frac == 0.7
    assert AdvisorConfig(dead_frac=0.7) == AdvisorConfig.from_dict({"dead_frac": 0.7})
    assert hash(AdvisorConfig(dead_frac=0.7)) == hash(AdvisorConfig.from_dict({"dead_frac": 0.7}))
    assert AdvisorConfig() != AdvisorConfig(dead_frac=0.7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dead_frac = 0.1  # type: ignore[misc]
    with pytest.raises(ValueError, match="must be an integer"):
        AdvisorConfig(sustained_checks=2.5)
    with pytest.raises(AttributeError):
        _ = cfg.no_such_threshold


def test_config_files_load_unchanged(tmp_path: Path) -> None:
    toml = tmp_path / "t.toml"
    toml.write_text("[advisor]\ndead_frac = 0.7\nflat_window = 80\n")
    cfg = AdvisorConfig.from_file(toml)
    assert (cfg.dead_frac, cfg.flat_window) == (0.7, 80)
    js = tmp_path / "t.json"
    js.write_text('{"diverge_factor": 3.0}')
    assert AdvisorConfig.from_file(js).diverge_factor == 3.0


@dataclasses.dataclass(frozen=True)
class _ExampleThresholds:
    example_level: float = 5.0  # a test-only threshold


@pytest.fixture
def example_rule() -> Iterator[str]:
    @rule(
        "example_loss_high",
        requires=("loss",),
        severity="info",
        rank=395,
        explained_by=("nonfinite_loss",),
        thresholds=_ExampleThresholds,
        summary="test only",
    )
    def example_loss_high(view: RunView, t: _ExampleThresholds) -> list[Diagnosis]:
        loss = view.series("loss")
        if loss.empty or not float(loss.iloc[-1]) > t.example_level:
            return []
        return [Diagnosis("example_loss_high", "info", int(loss.index[-1]), None, "high")]

    yield "example_loss_high"
    RULES.pop("example_loss_high")
    CODE_REGISTRY.pop("example_loss_high")


def _losses(*values: float) -> RunView:
    n = len(values)
    return RunView(pd.DataFrame({"step": range(n), "layer": [""] * n, "stat": ["loss"] * n, "value": list(values)}))


def test_adding_a_rule_is_one_decorated_function(example_rule: str) -> None:
    assert example_rule in __import__("nndiag.diagnosis").diagnosis.DIAGNOSIS_CODES
    assert AdvisorConfig().example_level == 5.0
    assert [d.code for d in Advisor().check(_losses(6.0, 7.0))] == [example_rule]
    assert Advisor(AdvisorConfig(example_level=10.0)).check(_losses(6.0, 7.0)) == []
    assert f"| `{example_rule}` | info | test only |" in docs.code_table()


def test_conflicting_threshold_defaults_are_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Clash:
        dead_frac: float = 0.9

    with pytest.raises(ValueError, match="dead_frac"):
        rule("clashing_code", thresholds=Clash, summary="x")(lambda view, t: [])
    assert "clashing_code" not in RULES
    with pytest.raises(ValueError, match="registered twice"):
        rule("dead_units", summary="x")(lambda view, t: [])
    with pytest.raises(ValueError, match="severity"):
        rule("bad_severity", severity="fatal", summary="x")  # type: ignore[arg-type]


def test_a_rule_emitting_a_code_it_does_not_own_is_reported_not_reported_as_diagnosis() -> None:
    class Recording(ErrorGuard):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def report(self, site: str, exc: BaseException) -> None:
            self.seen.append(f"{site}: {exc}")

    spec = dataclasses.replace(
        RULES["nonfinite_loss"], fn=lambda view, t: [Diagnosis("dead_units", "warning", 0, None, "x")]
    )
    guard = Recording()
    assert Advisor(rules=[spec], guard=guard).check(_losses(1.0, 2.0)) == []
    assert guard.seen and "emitted dead_units" in guard.seen[0]
