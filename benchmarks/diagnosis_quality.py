"""Diagnosis quality of nndiag's advisors on the fault-injection suite (``tests/faults``), over several seeds.

Every scenario of ``tests/faults/scenarios.py`` is trained once per seed; the Advisor is replayed
at every logging step over the history so far, as it runs live (``tests/faults/runner.py``).

Measures, per diagnosis code (a faulty run counts under its scenario's *primary* code, the first
of its ``expected`` codes):

* **recall**: share of faulty runs where a diagnosis with a code in ``expected`` was made, at
  severity warning/error (info for the info-level codes ``sigmoid_hidden_layer`` and
  ``underfitting``), at a check at or after the fault's onset step.
* **in time**: share of faulty runs detected within 50 optimizer steps of the onset.
* **cause right**: share of faulty runs whose *named cause* has a code in ``expected``. The named
  cause is the first of all diagnoses the Advisor made during the run (resolved ones included)
  in :func:`nndiag.advisor.by_severity` order: open before resolved, then errors before warnings
  before info, then earliest onset step (then code and layer name). A run with no diagnosis
  has no named cause and counts as wrong.
* **false alarms**: healthy runs in which this code was reported at warning/error severity (the
  ``healthy FA`` column), and faulty runs in which it was reported at warning/error before the
  fault's onset (``pre-onset FA``).
* **delay**: mean and max of (first check step with an expected diagnosis) - (onset step), in
  optimizer steps, over the detected runs.

Scenarios marked ``holdout`` are kept out of threshold tuning and reported separately.
Targets: every fault detected (recall 100%, all in time), cause right >= 90%, zero warning/error
on healthy runs, max delay <= 50 steps.

Usage:
    python benchmarks/diagnosis_quality.py [--seeds 3] [--markdown] [--only NAME ...] [--details]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from faults.runner import MAX_DELAY, Outcome, evaluate
from faults.scenarios import Scenario
from faults.suite import SCENARIOS, TASK_NAMES

CAUSE_TARGET = 0.9


@dataclass
class Row:
    runs: int = 0
    detected: int = 0
    in_time: int = 0
    cause_right: int = 0
    delays: list[int] = field(default_factory=list)
    healthy_fa: int = 0
    pre_onset_fa: int = 0

    def add(self, out: Outcome) -> None:
        self.runs += 1
        self.detected += out.detected
        self.in_time += out.detected_in_time
        self.cause_right += out.cause_right
        if out.delay is not None:
            self.delays.append(out.delay)

    def cells(self) -> list[str]:
        if self.runs == 0:
            return ["0", "-", "-", "-", "-", "-", str(self.healthy_fa), str(self.pre_onset_fa)]
        mean = f"{statistics.mean(self.delays):.1f}" if self.delays else "-"
        worst = str(max(self.delays)) if self.delays else "-"
        return [
            str(self.runs),
            _pct(self.detected, self.runs),
            _pct(self.in_time, self.runs),
            _pct(self.cause_right, self.runs),
            mean,
            worst,
            str(self.healthy_fa),
            str(self.pre_onset_fa),
        ]


HEADER = [
    "code",
    "faulty runs",
    "recall",
    "in time",
    "cause right",
    "delay mean",
    "delay max",
    "healthy FA",
    "pre-onset FA",
]


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f}% ({a}/{b})" if b else "-"


def table(rows: dict[str, Row], markdown: bool) -> str:
    body = [[code, *row.cells()] for code, row in sorted(rows.items())]
    total = Row()
    for row in rows.values():
        total.runs += row.runs
        total.detected += row.detected
        total.in_time += row.in_time
        total.cause_right += row.cause_right
        total.delays += row.delays
        total.healthy_fa += row.healthy_fa
        total.pre_onset_fa += row.pre_onset_fa
    body.append(["TOTAL", *total.cells()])
    return render([HEADER, *body], markdown)


def render(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def collect(outcomes: list[Outcome], holdout: bool) -> tuple[dict[str, Row], int]:
    """Per-code rows for the tuned (``holdout=False``) or holdout scenarios; also the healthy run count."""
    rows: dict[str, Row] = defaultdict(Row)
    healthy_runs = 0
    for out in outcomes:
        s = out.scenario
        if s.holdout != holdout:
            continue
        if s.healthy:
            healthy_runs += 1
            for code in sorted({fa.diagnosis.code for fa in out.false_alarms}):
                rows[code].healthy_fa += 1
            continue
        assert s.primary is not None
        rows[s.primary].add(out)
        for code in sorted({fa.diagnosis.code for fa in out.false_alarms}):
            rows[code].pre_onset_fa += 1
    return dict(rows), healthy_runs


def problems(outcomes: list[Outcome]) -> list[list[str]]:
    """One line per failing run: scenario, seed, what went wrong, what the Advisor said."""
    lines = [["scenario", "seed", "set", "expected", "problem", "got (severity, first seen at check)"]]
    for out in outcomes:
        s = out.scenario
        issues: list[str] = []
        if not s.healthy:
            if not out.detected:
                issues.append("missed")
            elif not out.detected_in_time:
                issues.append(f"late ({out.delay} steps)")
            if not out.cause_right:
                issues.append(f"cause named: {out.named_cause.code if out.named_cause else 'none'}")
        if out.false_alarms:
            issues.append("false alarm: " + ", ".join(sorted({fa.diagnosis.code for fa in out.false_alarms})))
        if out.rule_errors:
            issues.append("rule error: " + "; ".join(out.rule_errors))
        ok, evidence = s.check_exhibits(out.result)
        if not ok:
            issues.append(f"scenario no longer exhibits its fault ({evidence})")
        if not issues:
            continue
        got = []
        for d in out.diagnoses:
            first = min(
                (x.check for x in out.seen if (x.diagnosis.code, x.diagnosis.layer) == (d.code, d.layer)), default=-1
            )
            got.append(f"{d.code}[{d.layer or ''}] {d.severity}@{first}")
        lines.append(
            [
                s.name,
                str(out.seed),
                "holdout" if s.holdout else "tuned",
                "/".join(s.expected) or "(healthy)",
                "; ".join(issues),
                ", ".join(got) or "(none)",
            ]
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--only", nargs="*", default=None, help="scenario names (or substrings) to run")
    parser.add_argument(
        "--set", choices=("all", "core", "task"), default="all", help="core (textbook) or task scenarios only"
    )
    parser.add_argument("--details", action="store_true", help="print the full report of every failing run")
    parser.add_argument("--json", default=None, help="write every run's diagnoses to this JSON file (to diff versions)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    selected: list[Scenario] = [
        s
        for s in SCENARIOS
        if (not args.only or any(part in s.name for part in args.only))
        and (args.set == "all" or (s.name in TASK_NAMES) == (args.set == "task"))
    ]
    outcomes: list[Outcome] = []
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        for s in selected:
            outcomes.append(evaluate(s, seed))
    elapsed = time.perf_counter() - t0

    md = args.markdown
    n_faulty = sum(not s.healthy for s in selected)
    n_healthy = len(selected) - n_faulty
    print(f"# nndiag diagnosis quality: {len(selected)} scenarios x {args.seeds} seed(s) in {elapsed:.0f} s\n")
    print(f"{n_faulty} faulty and {n_healthy} healthy scenarios; {sum(s.holdout for s in selected)} held out.\n")
    summary = [
        ["set", "faulty runs", "recall", "in time", "cause right", "delay max", "healthy runs", "healthy FA runs"]
    ]
    for holdout in (False, True):
        label = "holdout" if holdout else "tuned"
        rows, healthy_runs = collect(outcomes, holdout)
        print(f"## {label} scenarios\n")
        print(table(rows, md) + "\n")
        faulty = [o for o in outcomes if o.scenario.holdout == holdout and not o.scenario.healthy]
        healthy = [o for o in outcomes if o.scenario.holdout == holdout and o.scenario.healthy]
        delays = [o.delay for o in faulty if o.delay is not None]
        summary.append(
            [
                label,
                str(len(faulty)),
                _pct(sum(o.detected for o in faulty), len(faulty)),
                _pct(sum(o.detected_in_time for o in faulty), len(faulty)),
                _pct(sum(o.cause_right for o in faulty), len(faulty)),
                str(max(delays)) if delays else "-",
                str(healthy_runs),
                str(sum(bool(o.false_alarms) for o in healthy)),
            ]
        )
    faulty = [o for o in outcomes if not o.scenario.healthy]
    healthy = [o for o in outcomes if o.scenario.healthy]
    delays = [o.delay for o in faulty if o.delay is not None]
    print("## totals vs targets\n")
    print(render(summary, md) + "\n")
    targets = [
        ["target", "value", "met"],
        [
            "every fault detected",
            _pct(sum(o.detected for o in faulty), len(faulty)),
            _met(all(o.detected for o in faulty)),
        ],
        [
            f"cause right >= {CAUSE_TARGET:.0%}",
            _pct(sum(o.cause_right for o in faulty), len(faulty)),
            _met(bool(faulty) and sum(o.cause_right for o in faulty) >= CAUSE_TARGET * len(faulty)),
        ],
        [
            "zero warning/error on healthy runs",
            f"{sum(bool(o.false_alarms) for o in healthy)} of {len(healthy)} runs",
            _met(not any(o.false_alarms for o in healthy)),
        ],
        [
            f"delay <= {MAX_DELAY} steps, or the scenario's own limit (detected runs)",
            f"max {max(delays) if delays else '-'}",
            _met(all(o.detected_in_time for o in faulty if o.detected)),
        ],
        [
            "no warning/error before onset",
            f"{sum(bool(o.false_alarms) for o in faulty)} of {len(faulty)} faulty runs",
            _met(not any(o.false_alarms for o in faulty)),
        ],
    ]
    print(render(targets, md) + "\n")
    issues = problems(outcomes)
    print("## failing runs\n")
    print((render(issues, md) if len(issues) > 1 else "none") + "\n")
    if args.details:
        for out in outcomes:
            s = out.scenario
            bad = (
                out.false_alarms
                or out.rule_errors
                or (not s.healthy and not (out.detected_in_time and out.cause_right))
            )
            if bad:
                print(out.report() + "\n")
    if args.json:
        write_json(args.json, outcomes)


def write_json(path: str, outcomes: list[Outcome]) -> None:
    """Every run's diagnoses (all fields) and first-seen checks, sorted, so two versions can be diffed."""
    runs = []
    for out in outcomes:
        runs.append(
            {
                "scenario": out.scenario.name,
                "seed": out.seed,
                "diagnoses": [d.to_dict() for d in out.diagnoses],
                "seen": [[x.check, x.diagnosis.code, x.diagnosis.layer, x.diagnosis.severity] for x in out.seen],
                "named_cause": out.named_cause.code if out.named_cause else None,
            }
        )
    Path(path).write_text(json.dumps(runs, indent=1, sort_keys=True, default=str))


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


if __name__ == "__main__":
    main()
