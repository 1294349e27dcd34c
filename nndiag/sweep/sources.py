"""Reading a sweep: an Optuna study (storage URL + study name) or a folder of nndiag runs.

* Optuna: the search space comes from the trials' distributions (``log=True`` means log space,
  the bounds are the declared range). nndiag diagnosis codes come from the user attribute
  ``nndiag_diagnoses`` that :mod:`nndiag.integrations.optuna` sets. A path stored in the study
  (``nndiag_log_dir``) is never opened: what a study says must not decide which files nndiag reads.
  Optuna's relational storage keeps attributes and distributions as JSON (no pickle); nndiag
  opens a SQLite file with it only after checking, read-only, that the file holds an Optuna
  study (Optuna would otherwise create its tables in any SQLite file it is given).
* Run folder: every ``nndiag.sqlite`` under the folder is one trial; its hyperparameters are
  ``meta["hparams"]``. The range of each numeric hyperparameter is the observed one; it counts
  as log-scaled when all values are positive and span more than one decade. The objective is the
  best ``val_loss`` when recorded, else the mean training loss over the last 10% of steps; runs
  with a non-finite loss or a broken-run diagnosis (:data:`BROKEN_CODES`) are failed trials.

Example:
    >>> load_sweep("/nonexistent/runs")
    Traceback (most recent call last):
    ...
    FileNotFoundError: /nonexistent/runs does not exist; pass a folder of nndiag runs or an Optuna storage URL ...
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from nndiag import advisor as advisor_codes
from nndiag.store.reader import load_run
from nndiag.store.schema import STORE_FILENAME
from nndiag.sweep.trials import Direction, Param, Sweep, Trial

# diagnoses that mean "this training is broken": its objective is not a result (and the pruner ends it)
BROKEN_CODES: tuple[str, ...] = advisor_codes.BROKEN_CODES  # the rule registry's "this run is broken" codes
LOG_SPAN = 10.0  # run folders: positive values spanning more than this ratio (one decade) count as log-scaled
TAIL = 0.1  # run folders without val_loss: the objective is the mean loss over the last 10% of steps
OPTUNA_HINT = "pip install nndiag[optuna]"


def load_sweep(
    source: str | Path, study: str | None = None, objective: str | None = None, direction: str | None = None
) -> Sweep:
    """Read a sweep from an Optuna storage URL (``sqlite:///study.db``) or a folder of nndiag runs.

    Args:
        source: a storage URL (anything with ``://``), an Optuna SQLite file, or a runs folder.
        study: the Optuna study name (optional when the storage holds exactly one study).
        objective: run folders only: the run-wide stat to optimise (default ``val_loss``, else ``loss``).
        direction: run folders: ``minimize`` (default) or ``maximize``; Optuna: taken from the study.

    Raises:
        ValueError: bad storage, unknown study, runs without hyperparameters, unknown objective.
        FileNotFoundError: the path does not exist or holds no runs.

    """
    if direction not in (None, "minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}.")
    text = str(source)
    if "://" in text:
        return from_optuna(text, study)
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; pass a folder of nndiag runs or an Optuna storage URL such as sqlite:///study.db."
        )
    if path.is_file() and path.name != STORE_FILENAME:
        return from_optuna(f"sqlite:///{path.resolve()}", study)
    if study is not None:
        raise ValueError(f"--study names an Optuna study, but {path} is a folder of runs; drop --study.")
    return from_runs(path, objective, direction or "minimize")  # type: ignore[arg-type]


# -- Optuna -------------------------------------------------------------------------------
def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise ValueError(f"reading an Optuna study needs optuna: {OPTUNA_HINT}") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def from_optuna(storage: str, study: str | None = None) -> Sweep:
    """Read an Optuna study from its storage URL; ``study`` may be omitted if it is the only one."""
    optuna = _optuna()
    if storage.startswith("sqlite:///"):
        db = Path(storage[len("sqlite:///") :])
        if not db.is_file():  # optuna would silently create an empty database
            raise FileNotFoundError(f"{db} does not exist; pass the SQLite file your study was stored in.")
        _check_optuna_sqlite(db)
    try:
        names = optuna.study.get_all_study_names(storage=storage)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"cannot open the Optuna storage {storage!r} ({first}); pass a storage URL such as "
            "sqlite:///study.db or postgresql://user@host/db."
        ) from None
    if not names:
        raise ValueError(f"the Optuna storage {storage} holds no study; run the search first.")
    if study is None:
        if len(names) > 1:
            raise ValueError(f"{storage} holds {len(names)} studies; pick one with --study: {', '.join(names)}.")
        study = names[0]
    elif study not in names:
        raise ValueError(f"no study named {study!r} in {storage}; studies there: {', '.join(names)}.")
    return from_study(optuna.load_study(study_name=study, storage=storage), source=storage)


OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})


def _check_optuna_sqlite(db: Path) -> None:
    """Raise ``ValueError`` unless ``db`` is an SQLite file holding Optuna's tables (checked read-only).

    Optuna's ``RDBStorage`` creates its tables and version rows in whatever database it opens, so
    handing it an nndiag run store or another SQLite file would modify that file.
    """
    uri = f"file:{quote(str(db.absolute()), safe='/')}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ValueError(f"{db} is not a readable SQLite file ({exc}); pass the Optuna study's database.") from None
    if "scalars" in tables and "series" in tables:
        raise ValueError(f"{db} is an nndiag run store, not an Optuna study; pass the folder of runs instead.")
    if not tables >= OPTUNA_TABLES:
        raise ValueError(f"{db} holds no Optuna study (its tables are missing); pass the study's database.")


def from_study(study: Any, source: str = "(in memory)") -> Sweep:
    """A :class:`Sweep` from an ``optuna.Study`` object (single objective)."""
    optuna = _optuna()
    if len(study.directions) != 1:
        raise ValueError(
            f"study {study.study_name!r} has {len(study.directions)} objectives; nndiag sweep analyses "
            "single-objective studies only."
        )
    direction: Direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    states = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
    trials: list[Trial] = []
    dists: dict[str, list[Any]] = {}
    for ft in study.get_trials(deepcopy=False):
        state = states.get(ft.state.name, "running")
        value = ft.value if state == "complete" else None
        if value is not None and not math.isfinite(value):
            value, state = None, "failed"
        attrs = ft.user_attrs
        trials.append(
            Trial(
                ft.number,
                dict(ft.params),
                value,
                state,
                _trial_codes(attrs),
                label=f"trial {ft.number}",
                note=attrs.get("nndiag_pruned") or attrs.get("nndiag_failed") or ft.system_attrs.get("fail_reason"),
            )
        )
        for name, dist in ft.distributions.items():
            dists.setdefault(name, []).append(dist)
    params = {name: _param_of(name, ds, optuna) for name, ds in dists.items()}
    return Sweep(study.study_name, source, direction, "value", trials, params)


def _trial_codes(attrs: dict[str, Any]) -> tuple[str, ...]:
    codes = attrs.get("nndiag_diagnoses")
    if isinstance(codes, list):
        return tuple(str(c) for c in codes)
    return ()  # nndiag_log_dir is shown nowhere and never opened: a stored path is not trusted


def _param_of(name: str, dists: list[Any], optuna: Any) -> Param:
    """One :class:`Param` from a hyperparameter's distributions (the union if they changed)."""
    dist = optuna.distributions
    if all(isinstance(d, dist.CategoricalDistribution) for d in dists):
        choices = tuple(dict.fromkeys(c for d in dists for c in d.choices))
        return Param(name, "categorical", choices=choices, domain_size=len(choices))
    nums = [d for d in dists if isinstance(d, (dist.FloatDistribution, dist.IntDistribution))]
    low, high = min(d.low for d in nums), max(d.high for d in nums)
    is_int = all(isinstance(d, dist.IntDistribution) for d in nums)
    log = any(d.log for d in nums)
    size = None
    if is_int:
        step = min(d.step for d in nums)
        size = int((high - low) // step) + 1
    elif all(d.step is not None for d in nums):
        size = round((high - low) / min(d.step for d in nums)) + 1
    return Param(name, "int" if is_int else "float", float(low), float(high), log=log, domain_size=size)


# -- folders of nndiag runs -----------------------------------------------------------------------
def from_runs(folder: Path, objective: str | None = None, direction: Direction = "minimize") -> Sweep:
    """A :class:`Sweep` from every nndiag run under ``folder`` (their ``hparams`` are the parameters)."""
    stores = sorted(folder.glob(f"**/{STORE_FILENAME}")) if folder.is_dir() else []
    if not stores:
        raise FileNotFoundError(
            f"{folder} holds no nndiag run ({STORE_FILENAME} not found under it); pass the folder your "
            "runs' log_dir points to, or an Optuna storage URL."
        )
    trials: list[Trial] = []
    notes: list[str] = []
    stats_seen: set[str] = set()
    without: list[str] = []
    for store in stores:
        run = load_run(store)
        label = str(store.parent.relative_to(folder)) if store.parent != folder else "."
        hparams = run.meta.get("hparams") or {}
        if not hparams:
            without.append(label)
            continue
        stats_seen |= set(run.history.stat[run.history.layer == ""].unique())
        value, state, note = _run_objective(run, objective, direction)
        codes = tuple(sorted({d.code for d in run.diagnoses}))
        trials.append(Trial(len(trials), dict(hparams), value, state, codes, label=label, note=note))
    if not trials:
        raise ValueError(
            f"none of the {len(stores)} runs under {folder} logged hyperparameters; record them with "
            "Monitor(..., hparams={'lr': lr}) or self.save_hyperparameters() in your LightningModule."
        )
    if objective is not None and objective not in stats_seen:
        raise ValueError(
            f"no run under {folder} recorded the stat {objective!r}; recorded run-wide stats: "
            f"{', '.join(sorted(stats_seen)) or 'none'} (record one with mon.record(name, value))."
        )
    if without:
        notes.append(f"{len(without)} run(s) without hyperparameters skipped: {', '.join(without[:5])}")
    params = _infer_space(trials)
    ranges = [p.name for p in params.values() if p.numeric]
    if ranges:
        notes.append(f"ranges of {', '.join(ranges)} are the observed min/max (run folders do not declare them)")
    name = objective or ("val_loss" if "val_loss" in stats_seen else "loss")
    return Sweep(str(folder), str(folder), direction, name, trials, params, notes)


def _run_objective(run: Any, objective: str | None, direction: Direction) -> tuple[float | None, str, str | None]:
    """(value, state, note) of one run: broken runs are failed trials with no value."""
    h = run.history[run.history.layer == ""]
    loss = h.value[h.stat == "loss"].to_numpy(dtype=float)
    broken = sorted({d.code for d in run.diagnoses if d.code in BROKEN_CODES})
    if loss.size and not np.isfinite(loss).all():
        return None, "failed", "non-finite loss"
    if broken:
        return None, "failed", f"diagnosed {', '.join(broken)}"
    stat = objective or ("val_loss" if (h.stat == "val_loss").any() else "loss")
    values = h.sort_values("step").value[h.stat == stat].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, "failed", f"no {stat} recorded"
    if stat == "loss":  # a noisy per-batch value: average the end of the run instead of taking the best batch
        value = float(values[-max(1, math.ceil(TAIL * values.size)) :].mean())
    else:
        value = float(values.min() if direction == "minimize" else values.max())
    return value, "complete", None


def _infer_space(trials: list[Trial]) -> dict[str, Param]:
    names = list(dict.fromkeys(k for t in trials for k in t.params))
    params = {}
    for name in names:
        values = [t.params[name] for t in trials if name in t.params and t.params[name] is not None]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if not values or len(set(values)) < 2:
            continue  # fixed across the sweep: not a searched hyperparameter
        if not numeric:
            choices = tuple(dict.fromkeys(values))
            params[name] = Param(name, "categorical", choices=choices, domain_size=len(choices))
            continue
        low, high = float(min(values)), float(max(values))
        is_int = all(isinstance(v, int) for v in values)
        log = low > 0 and high / low > LOG_SPAN
        size = int(high - low) + 1 if is_int else None
        params[name] = Param(name, "int" if is_int else "float", low, high, log=log, observed=True, domain_size=size)
    return params
