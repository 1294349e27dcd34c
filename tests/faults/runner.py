"""Run a scenario, replay the Advisor over its growing history, and score what it said.

The Advisor is replayed as it would run live: at every logging step ``s`` (a step with
per-layer statistics) the history is truncated to steps ``<= s`` and ``Advisor.check`` is called
on it (one Advisor per run, so de-duplication and resolution behave as in training); one final
check covers the whole run. A diagnosis is *seen* at the first check whose output contains it.

Scoring (one run):

* A diagnosis *qualifies* when its severity is warning or error, or info for the info-level codes
  (:data:`~faults.scenarios.INFO_CODES`).
* **detected**: a qualifying diagnosis with a code in ``expected`` is seen at a check at or after
  ``onset_step``; **delay** = that check's step minus ``onset_step`` (optimizer steps).
* **named cause**: the first diagnosis in :func:`nndiag.advisor.by_severity` order over every
  diagnosis the Advisor made during the run (open before resolved, errors before warnings before
  info, then earliest onset); the cause is **right** when its code is in ``expected``.
* **false alarms**: warning/error diagnoses seen in a healthy run, or seen at a check before
  ``onset_step`` in a faulty run (the run was still healthy then).
* **rule errors**: exceptions raised by rules (the Advisor contains them; the harness lists them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd

from faults.scenarios import INFO_CODES, RunResult, Scenario
from nndiag.advisor import Advisor, by_severity
from nndiag.diagnosis import Diagnosis
from nndiag.guard import ErrorGuard
from nndiag.rules.view import RunView

MAX_DELAY = 50  # optimizer steps from onset to detection (the product target)


class RecordingGuard(ErrorGuard):
    """An ErrorGuard that keeps the first exception of every failing site (no warnings)."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: dict[str, str] = {}

    def report(self, site: str, exc: BaseException) -> None:
        with self._lock:
            self.failures[site] = self.failures.get(site, 0) + 1
            self.errors.setdefault(site, f"{type(exc).__name__}: {exc}")


@dataclass
class Seen:
    """A diagnosis at the first check where it was seen (per code, layer and severity class)."""

    check: int
    diagnosis: Diagnosis


@dataclass(repr=False)
class Outcome:
    """Everything the harness measured for one run of one scenario."""

    scenario: Scenario
    seed: int
    result: RunResult
    checks: list[int]
    seen: list[Seen]
    diagnoses: list[Diagnosis]
    rule_errors: dict[str, str]
    run_seconds: float
    check_seconds: float
    detection: Seen | None = None
    named_cause: Diagnosis | None = None
    false_alarms: list[Seen] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Outcome({self.scenario.name}, seed={self.seed})"

    @property
    def detected(self) -> bool:
        return self.detection is not None

    @property
    def delay(self) -> int | None:
        return None if self.detection is None else self.detection.check - self.scenario.onset_step

    @property
    def detected_in_time(self) -> bool:
        return self.delay is not None and self.delay <= self.scenario.max_delay

    @property
    def cause_right(self) -> bool:
        return self.named_cause is not None and self.named_cause.code in self.scenario.expected

    def report(self) -> str:
        """A readable account of the run: what was expected, what was seen when, and key numbers."""
        s = self.scenario
        lines = [
            f"scenario {s.name} (seed {self.seed}, {self.result.steps} steps, {len(self.checks)} checks): "
            f"{s.description}",
            f"  expected: {', '.join(s.expected) or '(healthy: no warning/error)'}; onset step {s.onset_step}",
        ]
        if not s.healthy:
            if self.detection is None:
                lines.append("  NOT DETECTED")
            else:
                d = self.detection.diagnosis
                lines.append(f"  detected: {d.code} ({d.severity}) at check {self.detection.check}, delay {self.delay}")
            nc = self.named_cause
            lines.append(
                f"  named cause: {nc.code if nc else None} ({nc.severity if nc else '-'}) -> "
                f"{'right' if self.cause_right else 'WRONG'}"
            )
        for fa in self.false_alarms:
            d = fa.diagnosis
            lines.append(
                f"  FALSE ALARM at check {fa.check}: {d.code} [{d.layer}] {d.severity}: {d.message} "
                f"evidence={d.evidence}"
            )
        lines.append("  all diagnoses (by severity):")
        for d in self.diagnoses:
            first = min((x.check for x in self.seen if _key(x.diagnosis) == _key(d)), default=None)
            lines.append(
                f"    {d.severity:7s} {d.code} [{d.layer}] onset {d.step}, first seen at check {first}, "
                f"{'resolved' if d.resolved else 'open'}: {d.message}"
            )
        for site, err in self.rule_errors.items():
            lines.append(f"  RULE ERROR in {site}: {err}")
        lines.append("  history: " + history_summary(self.result.history))
        return "\n".join(lines)


def _key(d: Diagnosis) -> tuple[str, str | None]:
    return (d.code, d.layer)


def qualifies(d: Diagnosis) -> bool:
    """Warning/error, or info for the info-level codes."""
    return d.severity in ("warning", "error") or (d.severity == "info" and d.code in INFO_CODES)


def logging_steps(history: pd.DataFrame) -> list[int]:
    """Steps with per-layer statistics (the steps where a live Advisor would check), plus the last step."""
    if history.empty:
        return []
    steps = sorted(int(s) for s in history.loc[history.layer != "", "step"].unique())
    last = int(history.step.max())
    if not steps or steps[-1] != last:
        steps.append(last)
    return steps


def replay(history: pd.DataFrame, facts: dict, advisor: Advisor) -> tuple[list[int], list[Seen]]:
    """Check the Advisor at every logging step over the history up to it; first sightings in order."""
    checks = logging_steps(history)
    steps = history.step.to_numpy()
    seen: list[Seen] = []
    known: set[tuple[str, str | None, bool]] = set()
    for i, s in enumerate(checks):
        view = RunView(history[steps <= s], facts, finished=i == len(checks) - 1)  # the last check ends the run
        for d in advisor.check(view):
            if d.resolved:
                continue
            k = (d.code, d.layer, qualifies(d))
            if k not in known:
                known.add(k)
                seen.append(Seen(s, d))
    return checks, seen


def evaluate(scenario: Scenario, seed: int = 0, result: RunResult | None = None) -> Outcome:
    """Run ``scenario`` (unless ``result`` is given), replay the Advisor and score the run."""
    t0 = time.perf_counter()
    result = result if result is not None else scenario.run(seed)
    t1 = time.perf_counter()
    guard = RecordingGuard()
    advisor = Advisor(guard=guard)
    checks, seen = replay(result.history, result.facts, advisor)
    t2 = time.perf_counter()
    out = Outcome(
        scenario=scenario,
        seed=seed,
        result=result,
        checks=checks,
        seen=seen,
        diagnoses=by_severity(advisor.diagnoses),
        rule_errors=dict(guard.errors),
        run_seconds=t1 - t0,
        check_seconds=t2 - t1,
    )
    onset = scenario.onset_step
    for x in seen:
        d = x.diagnosis
        if scenario.healthy or x.check < onset:
            if d.severity in ("warning", "error"):
                out.false_alarms.append(x)
        elif out.detection is None and d.code in scenario.expected and qualifies(d):
            out.detection = x
    # a diagnosis first seen before onset that still holds after it counts at the first check after onset
    if not scenario.healthy and out.detection is None:
        late = [c for c in checks if c >= onset]
        for d in advisor.diagnoses:
            if d.code in scenario.expected and qualifies(d) and (d.last_step or d.step) >= onset and late:
                out.detection = Seen(late[0], d)
                break
    out.named_cause = out.diagnoses[0] if out.diagnoses else None
    return out


def history_summary(h: pd.DataFrame) -> str:
    """Key numbers of a run: loss start/min/end, first non-finite loss, update ratios, dead/sat fractions..."""
    import math

    parts: list[str] = []
    loss = h[h.stat == "loss"].set_index("step").value
    if len(loss):
        bad = loss[~loss.map(math.isfinite)]
        fin = loss[loss.map(math.isfinite)]
        parts.append(
            f"loss first10={loss.iloc[:10].mean():.4g} min={fin.min() if len(fin) else math.nan:.4g} "
            f"last10={loss.iloc[-10:].mean():.4g}" + (f" first_nonfinite_step={int(bad.index[0])}" if len(bad) else "")
        )
    ur = h[h.stat == "update_ratio"].groupby("layer").value.median()
    if len(ur):
        parts.append(f"median update_ratio {ur.min():.2g}..{ur.max():.2g}")
    for stat in ("dead_frac", "sat_frac"):
        m = h[h.stat == stat].groupby("layer").value.max()
        if len(m) and m.max() > 0:
            parts.append(f"max {stat} {m.idxmax()}={m.max():.2f}")
    gt = h[h.stat == "grad_norm_total"].value
    if len(gt):
        parts.append(f"grad_norm_total first={gt.iloc[0]:.3g} max={gt.max():.3g} last={gt.iloc[-1]:.3g}")
    val = h[h.stat == "val_loss"].value
    if len(val):
        parts.append(f"val_loss first={val.iloc[0]:.3g} min={val.min():.3g} last={val.iloc[-1]:.3g}")
    return "; ".join(parts)
