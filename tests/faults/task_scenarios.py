"""Task-level faults (issue 15) and their healthy look-alikes, written the way users write them.

Small Keras-style MLPs and CNNs on scikit-learn's bundled datasets (no download) or synthetic data:
regression with MSE/L1, binary classification with sigmoid + ``BCELoss`` and with logits +
``BCEWithLogitsLoss``, multi-class, multi-label, a tiny language model, a model that returns its
own loss (Hugging Face style) and a contrastive loss. Each faulty scenario is beside a healthy twin
that differs only in the fix.

The scenarios follow :mod:`faults.scenarios` (same :class:`~faults.scenarios.Scenario` records;
``TASK_SCENARIOS`` is to be appended to ``SCENARIOS``). Their plain loops pass the loss *with its
autograd graph* and the targets: ``mon.step(loss, target=y)``. The harness also measures the task
itself, independently of nndiag's recorder, on every 10th step (:class:`TaskRunResult` ``.probe``:
loss, target and output summaries, the total weight norm), so that ``exhibits`` checks that the run
really shows its fault without trusting the code under test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

import nndiag
from faults.scenarios import (
    _NO_ADVICE,
    Evidence,
    RunResult,
    Scenario,
    all_of,
    fit_lightning,
    loss_series,
    sampler,
    scenario,
    stat_rows,
    trains,
)
from nndiag.collect.task import baseline_loss, loss_kind, output_summary, target_summary

TASK_SCENARIOS: list[Scenario] = []

# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass
class TaskRunResult(RunResult):
    """A :class:`RunResult` plus the harness's own measurements of the task.

    ``probe``: one row every ``probe_every`` steps (and the last): ``step``, ``loss``, target
    ``t_mean/t_std/t_min/t_max``, output ``o_mean/o_std/o_min/o_max/o_spread/o_softmax``,
    ``wnorm`` (total weight norm). ``task``: ``loss_kind`` and ``note`` of the first step's
    graph, ``baseline`` (the best constant prediction's loss on the whole training set).
    """

    probe: pd.DataFrame = field(default_factory=pd.DataFrame)
    task: dict[str, Any] = field(default_factory=dict)


def task_scenario(
    *,
    expected: tuple[str, ...] = (),
    onset_step: int = 0,
    family: str = "mlp",
    optimizer: str = "Adam",
    holdout: bool = False,
    exhibits: Evidence | None = None,
    max_delay: int = 50,
) -> Callable[[Callable[[int], RunResult]], Callable[[int], RunResult]]:
    """Register ``fn`` in :data:`TASK_SCENARIOS` (:func:`faults.scenarios.scenario`; Adam by default)."""
    return scenario(
        expected=expected,
        onset_step=onset_step,
        family=family,
        optimizer=optimizer,
        holdout=holdout,
        exhibits=exhibits,
        max_delay=max_delay,
        registry=TASK_SCENARIOS,
    )


# ---------------------------------------------------------------------------------------------
# Data (scikit-learn's bundled datasets are read from the installed package; nothing is downloaded)
# ---------------------------------------------------------------------------------------------


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-8)


@cache
def _sk(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    import sklearn.datasets as ds

    loader = {
        "diabetes": lambda: ds.load_diabetes(scaled=False),
        "breast_cancer": ds.load_breast_cancer,
        "digits": ds.load_digits,
        "iris": ds.load_iris,
        "wine": ds.load_wine,
    }[name]
    d = loader()
    return torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target)


def diabetes() -> tuple[torch.Tensor, torch.Tensor]:
    """442 patients, 10 standardised features; disease progression 25-346 (mean 152, std 77), float."""
    x, y = _sk("diabetes")
    return _standardise(x), y.float()


def breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    """569 samples, 30 standardised features; 0/1 labels (63% ones) as float."""
    x, y = _sk("breast_cancer")
    return _standardise(x), y.float()


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """1797 8x8 digit images as 64 pixel features scaled to [0, 1]; labels 0-9 (int64)."""
    x, y = _sk("digits")
    return x / 16.0, y.long()


def wine() -> tuple[torch.Tensor, torch.Tensor]:
    """178 wines, 13 standardised features; 3 cultivars 0-2 (int64)."""
    x, y = _sk("wine")
    return _standardise(x), y.long()


def iris() -> tuple[torch.Tensor, torch.Tensor]:
    """150 flowers, 4 standardised features; 3 species 0-2 (int64)."""
    x, y = _sk("iris")
    return _standardise(x), y.long()


def house_prices(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic house prices: 8 standardised features, prices ~ 200k +- 60k (a linear-plus-noise law)."""
    gen = torch.Generator().manual_seed(seed + 21)
    x = torch.randn(n, 8, generator=gen)
    w = torch.randn(8, generator=gen)
    y = 200_000 + 20_000 * (x @ w) + 10_000 * torch.randn(n, generator=gen)
    return x, y


def multilabel(n: int, seed: int, labels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """20 features, ``labels`` independent tags (about 2 per sample) as a float multi-hot matrix."""
    gen = torch.Generator().manual_seed(seed + 31)
    x = torch.randn(n, 20, generator=gen)
    w = torch.randn(20, labels, generator=gen)
    y = ((x @ w) / math.sqrt(20) + 0.3 * torch.randn(n, labels, generator=gen) > 0.3).float()
    return x, y


def markov_text(n: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """Token sequences from a sparse random Markov chain (each token has 2 likely successors)."""
    gen = torch.Generator().manual_seed(seed + 41)
    succ = torch.randint(0, vocab, (vocab, 2), generator=gen)
    seq = torch.empty(n, length, dtype=torch.long)
    seq[:, 0] = torch.randint(0, vocab, (n,), generator=gen)
    for t in range(1, length):
        pick = torch.randint(0, 2, (n,), generator=gen)
        seq[:, t] = succ[seq[:, t - 1], pick]
    return seq


def dense(features: int, out: int, hidden: tuple[int, ...] = (64, 32), final: nn.Module | None = None) -> nn.Sequential:
    """A Keras-style ``Sequential([Dense(64, relu), Dense(32, relu), Dense(out, final)])``."""
    layers: list[nn.Module] = []
    width = features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, out))
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


def small_cnn(classes: int = 10) -> nn.Sequential:
    """Conv(16) -> ReLU -> MaxPool -> Conv(32) -> ReLU -> MaxPool -> Flatten -> Dense(classes) on 8x8 images."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, classes),
    )


# ---------------------------------------------------------------------------------------------
# Training loops
# ---------------------------------------------------------------------------------------------

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


def _weight_norm(model: nn.Module) -> float:
    with torch.no_grad():
        return math.sqrt(sum(float((p.detach().float() ** 2).sum()) for p in model.parameters()))


def _probe_row(step: int, loss: torch.Tensor, out: Any, y: torch.Tensor, model: nn.Module) -> dict[str, float]:
    t = target_summary(y)
    o = output_summary(out) or {}
    return {
        "step": step,
        "loss": float(loss.detach()),
        "t_mean": t["mean"],
        "t_std": t["std"],
        "t_min": t["min"],
        "t_max": t["max"],
        "o_mean": o.get("mean", math.nan),
        "o_std": o.get("std", math.nan),
        "o_min": o.get("min", math.nan),
        "o_max": o.get("max", math.nan),
        "o_spread": o.get("spread", math.nan),
        "o_softmax": float(o.get("row_sum_one", False)),
        "wnorm": _weight_norm(model),
    }


def _task_facts(loss: torch.Tensor, y_all: torch.Tensor) -> dict[str, Any]:
    k = loss_kind(loss)
    return {"loss_kind": k.kind, "note": k.note, "baseline": baseline_loss(k.kind, target_summary(y_all))}


def fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    loss_fn: LossFn,
    *,
    y_all: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    val_every: int = 10,
    probe_every: int = 10,
    scheduler: Any = None,
    output: Callable[[Any], Any] | None = None,
) -> TaskRunResult:
    """A plain loop under ``nndiag.Monitor``: ``mon.step(loss, target=y)`` after each optimizer step.

    ``loss_fn(model_output, y)``; ``output`` maps the model's output to the prediction the harness
    probes (default: the output itself). ``y_all``: the training targets (for the baseline).
    """
    rows: list[dict[str, float]] = []
    task: dict[str, Any] = {}
    with nndiag.Monitor(model, opt, log_dir=None, **_NO_ADVICE) as mon:
        for step in range(steps):
            x, y = next(batches)
            model.train()
            out = model(x)
            loss = loss_fn(out, y)
            if step == 0:
                task = _task_facts(loss, y_all)
            if step % probe_every == 0 or step == steps - 1:
                rows.append(_probe_row(step, loss, output(out) if output else out, y, model))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            mon.step(loss, target=y)  # the loss with its graph (loss kind), and the targets
            if val is not None and (step + 1) % val_every == 0:
                model.eval()
                with torch.no_grad():
                    mon.record("val_loss", float(loss_fn(model(val[0]), val[1])))
        mon.close()
        return TaskRunResult(mon.history, mon.session.facts, mon.steps, pd.DataFrame(rows), task)


def fit_lightning_probed(
    net: nn.Module,
    loss_fn: LossFn,
    make_opt: Callable[[Any], torch.optim.Optimizer],
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    steps: int,
    seed: int,
) -> TaskRunResult:
    """Lightning (``(x, y)`` batches: the callback finds the targets); the harness probes the trained net."""
    data = torch.utils.data.TensorDataset(x, y)
    r = fit_lightning(net, lambda m, b: loss_fn(m(b[0]), b[1]), make_opt, data, batch, steps, seed)
    net.train()
    out = net(x)
    loss = loss_fn(out, y)
    return TaskRunResult(
        r.history, r.facts, r.steps, pd.DataFrame([_probe_row(r.steps, loss, out, y, net)]), _task_facts(loss, y)
    )


# ---------------------------------------------------------------------------------------------
# Evidence from the harness's probe (independent of the recorder and the rules)
# ---------------------------------------------------------------------------------------------


def _probe(r: RunResult) -> pd.DataFrame:
    return getattr(r, "probe", pd.DataFrame())


def probe_tail(col: str, *, above: float | None = None, below: float | None = None, rows: int = 3) -> Evidence:
    """The mean of a probe column over the last ``rows`` probes passes the bounds."""

    def check(r: RunResult) -> tuple[bool, str]:
        p = _probe(r)
        v = float(p[col].iloc[-rows:].mean()) if len(p) else math.nan
        ok = (above is None or v > above) and (below is None or v < below)
        return ok, f"probe {col} over the last {rows} probes = {v:.4g}"

    return check


def probe_all(col: str, *, above: float | None = None, below: float | None = None) -> Evidence:
    """Every probe of a column passes the bounds."""

    def check(r: RunResult) -> tuple[bool, str]:
        p = _probe(r)
        lo, hi = (float(p[col].min()), float(p[col].max())) if len(p) else (math.nan, math.nan)
        ok = len(p) > 0 and (above is None or lo > above) and (below is None or hi < below)
        return ok, f"probe {col} ranges {lo:.4g}..{hi:.4g}"

    return check


def graph_says(kind: str, note: str | None = None) -> Evidence:
    """The first step's loss graph is ``kind`` (with ``note``)."""

    def check(r: RunResult) -> tuple[bool, str]:
        task = getattr(r, "task", {})
        ok = task.get("loss_kind") == kind and (note is None or task.get("note") == note)
        return ok, f"loss graph: {task.get('loss_kind')} ({task.get('note')})"

    return check


def at_baseline(frac: float = 0.9, steps: int = 20) -> Evidence:
    """The final training loss (last ``steps`` steps) is at least ``frac`` x the constant-prediction baseline."""

    def check(r: RunResult) -> tuple[bool, str]:
        base = getattr(r, "task", {}).get("baseline")
        end = float(loss_series(r.history).iloc[-steps:].mean())
        ok = base is not None and end >= frac * base
        return ok, f"loss last{steps}={end:.4g} vs baseline {base if base is None else round(base, 4)}"

    return check


def below_baseline(frac: float = 0.7, steps: int = 20) -> Evidence:
    """Healthy: the final loss is below ``frac`` x the baseline (the model learned from its inputs)."""

    def check(r: RunResult) -> tuple[bool, str]:
        base = getattr(r, "task", {}).get("baseline")
        end = float(loss_series(r.history).iloc[-steps:].mean())
        ok = base is not None and end < frac * base
        return ok, f"loss last{steps}={end:.4g} vs baseline {base if base is None else round(base, 4)} (< {frac}x)"

    return check


def still_falling(min_rel_drop: float = 0.15, last: int = 40) -> Evidence:
    """The loss fell by at least ``min_rel_drop`` (relative) over the last ``last`` steps: stopped too early."""

    def check(r: RunResult) -> tuple[bool, str]:
        loss = loss_series(r.history)
        a, b = float(loss.iloc[-last : -last + 10].mean()), float(loss.iloc[-10:].mean())
        drop = (a - b) / a
        return drop >= min_rel_drop, f"loss fell {drop:.1%} over the last {last} steps ({a:.4g} -> {b:.4g})"

    return check


def settled(frac: float = 0.05, last: int = 60) -> Evidence:
    """Healthy converged run: over the last ``last`` steps the loss fell by less than ``frac`` x the baseline.

    (Relative to the baseline, not to the loss: a loss near zero keeps halving while it changes nothing.)
    """

    def check(r: RunResult) -> tuple[bool, str]:
        base = getattr(r, "task", {}).get("baseline") or math.nan
        loss = loss_series(r.history)
        a, b = float(loss.iloc[-last : -last + 20].mean()), float(loss.iloc[-20:].mean())
        return (
            a - b < frac * base,
            f"loss fell {a - b:.3g} over the last {last} steps ({a:.4g} -> {b:.4g}), baseline {base:.4g}",
        )

    return check


def weights_shrink(factor: float = 0.7) -> Evidence:
    """The total weight norm at the end is below ``factor`` x its initial value."""

    def check(r: RunResult) -> tuple[bool, str]:
        p = _probe(r)
        a, b = float(p.wnorm.iloc[0]), float(p.wnorm.iloc[-1])
        return b < factor * a, f"total weight norm {a:.3g} -> {b:.3g}"

    return check


def update_ratio(*, above: float | None = None, below: float | None = None, steps: tuple[int, int]) -> Evidence:
    """The median over weight tensors of the recorded update/weight ratio, medianed over ``steps``, passes."""

    def check(r: RunResult) -> tuple[bool, str]:
        rows = stat_rows(r.history, "update_ratio")
        rows = rows[(rows.step >= steps[0]) & (rows.step <= steps[1]) & rows.layer.str.endswith("weight")]
        v = float(rows.groupby("step").value.median().median()) if len(rows) else math.nan
        ok = (above is None or v > above) and (below is None or v < below)
        return ok, f"median update_ratio over steps {steps[0]}-{steps[1]} = {v:.3g}"

    return check


# ---------------------------------------------------------------------------------------------
# Losses as people write them
# ---------------------------------------------------------------------------------------------


def mse_column(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``nn.MSELoss()(model(x), y)`` with a ``Dense(1)`` output ``[N, 1]`` and targets ``[N]``: broadcasts."""
    return F.mse_loss(out, y)


def mse_squeezed(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.squeeze(1), y)


def l1_squeezed(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(out.squeeze(1), y)


def bce_squeezed(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy(out.squeeze(1), y)


def bce_logits_squeezed(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out.squeeze(1), y)


def lm_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the vocabulary: ``[B, T, V]`` logits flattened with ``view``."""
    return F.cross_entropy(out.view(-1, out.shape[-1]), y.reshape(-1))


class TinyLM(nn.Module):
    """Embedding -> GRU -> Linear over the vocabulary (next-token logits ``[B, T, V]``)."""

    def __init__(self, vocab: int = 16, dim: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(x))
        return self.head(h)


def lm_data(seed: int, n: int = 512, length: int = 17, vocab: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    seq = markov_text(n, length, vocab, seed)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


# ---------------------------------------------------------------------------------------------
# output_activation_mismatch
# ---------------------------------------------------------------------------------------------


@task_scenario(
    expected=("output_activation_mismatch",),
    exhibits=all_of(probe_all("o_max", below=1.0), probe_all("t_min", below=-0.5), at_baseline(0.4)),
)
def sigmoid_output_standardised_targets(seed: int) -> RunResult:
    """Diabetes regression with standardised targets (about -2..2.5) through a sigmoid output: (0, 1) only."""
    x, y = diabetes()
    y = (y - y.mean()) / y.std()
    model = dense(10, 1, final=nn.Sigmoid())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 250, mse_squeezed, y_all=y)


@task_scenario(
    expected=("output_activation_mismatch",),
    exhibits=all_of(probe_all("o_min", above=-1e-6), probe_all("t_min", below=-1.0)),
)
def relu_output_negative_targets(seed: int) -> RunResult:
    """Keras habit ``Dense(1, activation='relu')`` on a regression target that is negative half the time."""
    gen = torch.Generator().manual_seed(seed + 5)
    x = torch.randn(1024, 8, generator=gen)
    y = x @ torch.randn(8, generator=gen) / math.sqrt(8) + 0.1 * torch.randn(1024, generator=gen)
    model = dense(8, 1, final=nn.ReLU())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 64, seed), 250, mse_squeezed, y_all=y)


@task_scenario(
    expected=("output_activation_mismatch",),
    holdout=True,
    exhibits=all_of(probe_all("o_min", above=0.999), probe_all("o_spread", below=1e-6)),
)
def softmax_over_one_unit(seed: int) -> RunResult:
    """Breast-cancer classifier ``Dense(1)`` + ``Softmax(dim=1)`` + ``BCELoss``: the output is always 1.0."""
    x, y = breast_cancer()
    model = dense(30, 1, final=nn.Softmax(dim=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 150, bce_squeezed, y_all=y)


@task_scenario(
    expected=("output_activation_mismatch", "loss_mismatch"),
    optimizer="SGD",
    exhibits=all_of(graph_says("cross_entropy", "softmax_before_cross_entropy"), probe_tail("loss", above=1.55)),
)
def softmax_before_cross_entropy(seed: int) -> RunResult:
    """Digits MLP ending in ``nn.Softmax`` fed to ``CrossEntropyLoss`` (softmax applied twice; SGD, 250 steps).

    The loss cannot go below 1.46 (ln(1 + 9/e)) and the gradients are squashed; the twin without the
    softmax reaches ~0.2 in the same steps.
    """
    x, y = digits()
    model = dense(64, 10, final=nn.Softmax(dim=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return fit(model, opt, sampler(x, y, 32, seed), 250, F.cross_entropy, y_all=y)


@task_scenario(
    expected=("output_activation_mismatch", "loss_mismatch"),
    holdout=True,
    exhibits=all_of(graph_says("bce_with_logits", "sigmoid_before_bce_with_logits"), probe_tail("loss", above=0.3)),
)
def sigmoid_before_bce_with_logits(seed: int) -> RunResult:
    """Breast-cancer classifier with a final ``nn.Sigmoid`` *and* ``BCEWithLogitsLoss``: the loss floors at 0.31."""
    x, y = breast_cancer()
    model = dense(30, 1, final=nn.Sigmoid())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 200, bce_logits_squeezed, y_all=y)


# ---------------------------------------------------------------------------------------------
# loss_mismatch
# ---------------------------------------------------------------------------------------------


@task_scenario(
    expected=("loss_mismatch",),
    exhibits=all_of(graph_says("mse"), at_baseline(0.85)),
)
def mse_broadcast_column_vs_vector(seed: int) -> RunResult:
    """Diabetes regression: ``Dense(1)`` output ``[N, 1]`` against targets ``[N]`` (MSE broadcasts to [N, N]).

    Every prediction is compared with every target of the batch, so the network learns the batch
    mean: the loss stays at the targets' variance (the twin reaches ~0.5 of it).
    """
    x, y = diabetes()
    y = (y - y.mean()) / y.std()
    model = dense(10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 250, mse_column, y_all=y)


@task_scenario(
    expected=("loss_mismatch",),
    exhibits=all_of(graph_says("bce_with_logits"), probe_all("t_min", below=-0.5), probe_tail("loss", below=0.0)),
)
def bce_on_continuous_targets(seed: int) -> RunResult:
    """``BCEWithLogitsLoss`` on standardised regression targets (outside [0, 1]): the loss falls below zero."""
    x, y = diabetes()
    y = (y - y.mean()) / y.std()
    model = dense(10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 200, bce_logits_squeezed, y_all=y)


@task_scenario(
    expected=("loss_mismatch",),
    optimizer="SGD",
    holdout=True,
    exhibits=all_of(graph_says("mse"), probe_all("t_max", above=1.5)),
)
def mse_on_class_indices(seed: int) -> RunResult:
    """Wine cultivars 0/1/2 cast to float and fitted with one output and MSE (classes treated as a scale)."""
    x, y = wine()
    yf = y.float()
    model = dense(13, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return fit(model, opt, sampler(x, yf, 16, seed), 200, mse_squeezed, y_all=yf)


@task_scenario(
    expected=("loss_mismatch", "output_activation_mismatch"),
    exhibits=all_of(graph_says("mse"), probe_all("o_softmax", above=0.5), probe_tail("loss", above=0.12)),
)
def mse_on_softmax_multilabel(seed: int) -> RunResult:
    """Multi-label tags (about 2 per sample) fitted with a softmax output and MSE: rows must sum to 1."""
    x, y = multilabel(1024, seed)
    model = dense(20, 5, final=nn.Softmax(dim=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 64, seed), 250, F.mse_loss, y_all=y)


# ---------------------------------------------------------------------------------------------
# target_not_normalized
# ---------------------------------------------------------------------------------------------


@task_scenario(
    expected=("target_not_normalized",),
    exhibits=all_of(probe_all("t_mean", above=100.0), probe_tail("loss", above=2000.0)),
)
def diabetes_raw_targets(seed: int) -> RunResult:
    """Diabetes regression on the raw targets (25-346): with Adam 1e-3 the output bias crawls toward 152."""
    x, y = diabetes()
    model = dense(10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 250, mse_squeezed, y_all=y)


@task_scenario(
    expected=("target_not_normalized",),
    holdout=True,
    exhibits=all_of(probe_all("t_mean", above=1e5), probe_tail("loss", above=1e9)),
)
def house_prices_in_dollars(seed: int) -> RunResult:
    """House prices in dollars (~200k) as regression targets of an MLP with MSE and Adam 1e-3."""
    x, y = house_prices(1024, seed)
    model = dense(8, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 64, seed), 200, mse_squeezed, y_all=y)


@task_scenario(
    expected=("target_not_normalized",),
    family="cnn",
    exhibits=all_of(probe_all("t_mean", above=1000.0), at_baseline(0.9)),
)
def cnn_l1_targets_in_thousands(seed: int) -> RunResult:
    """Digits CNN regressing a made-up score in the thousands (1000 x digit + noise) with L1 loss, Adam 1e-3.

    L1 gradients have unit size whatever the error, so the output crawls ~1e-3 per step toward 4500.
    """
    x, y = digits()
    gen = torch.Generator().manual_seed(seed + 12)
    score = 1000.0 * y.float() + 50.0 * torch.randn(len(y), generator=gen)
    model = small_cnn(classes=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x.view(-1, 1, 8, 8), score, 32, seed), 200, l1_squeezed, y_all=score)


# ---------------------------------------------------------------------------------------------
# loss_at_baseline
# ---------------------------------------------------------------------------------------------


# the loss must first settle at the baseline (it starts above it), then stay there for two 25-step windows:
# measured delays 50-140 steps over seeds 0-4 (docs/diagnosis_quality.md)
@task_scenario(
    expected=("loss_at_baseline",),
    exhibits=all_of(at_baseline(0.9)),
    max_delay=150,
)
def labels_shuffled_separately(seed: int) -> RunResult:
    """Breast cancer with the features shuffled but not the labels (``x = x[perm]``): nothing to learn."""
    x, y = breast_cancer()
    gen = torch.Generator().manual_seed(seed + 3)
    x = x[torch.randperm(len(x), generator=gen)]
    model = dense(30, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 250, bce_logits_squeezed, y_all=y)


@task_scenario(
    expected=("loss_at_baseline",),
    family="cnn",
    holdout=True,
    exhibits=all_of(at_baseline(0.9)),
    max_delay=150,
)
def digits_labels_off_by_shuffle_cnn(seed: int) -> RunResult:
    """Digits CNN whose labels were shuffled on their own (a separate ``random.shuffle(labels)``)."""
    x, y = digits()
    gen = torch.Generator().manual_seed(seed + 4)
    y = y[torch.randperm(len(y), generator=gen)]
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x.view(-1, 1, 8, 8), y, 32, seed), 250, F.cross_entropy, y_all=y)


@task_scenario(
    expected=("lr_too_high",),
    exhibits=all_of(update_ratio(above=0.1, steps=(0, 5)), at_baseline(0.9)),
)
def adam_lr_high_collapse_to_prior(seed: int) -> RunResult:
    """Digits MLP under Adam at lr 1.0: huge first updates, then a constant prediction with the loss at ln 10."""
    x, y = digits()
    model = dense(64, 10, hidden=(128, 64))
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    return fit(model, opt, sampler(x, y, 64, seed), 200, F.cross_entropy, y_all=y)


# ---------------------------------------------------------------------------------------------
# regularization_too_strong
# ---------------------------------------------------------------------------------------------


@task_scenario(
    expected=("regularization_too_strong",),
    exhibits=all_of(weights_shrink(0.5), at_baseline(0.8)),
)
def adam_weight_decay_too_strong(seed: int) -> RunResult:
    """Digits MLP with ``Adam(weight_decay=0.5)`` (coupled L2): the weights shrink, the loss stays high."""
    x, y = digits()
    model = dense(64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0.5)
    return fit(model, opt, sampler(x, y, 64, seed), 250, F.cross_entropy, y_all=y)


@task_scenario(
    expected=("regularization_too_strong",),
    optimizer="SGD",
    exhibits=all_of(weights_shrink(0.5), at_baseline(0.7)),
)
def sgd_weight_decay_too_strong(seed: int) -> RunResult:
    """Breast-cancer MLP with ``SGD(lr=0.05, momentum=0.9, weight_decay=0.3)``: the weights decay away."""
    x, y = breast_cancer()
    model = dense(30, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.3)
    return fit(model, opt, sampler(x, y, 32, seed), 250, bce_logits_squeezed, y_all=y)


@task_scenario(
    expected=("regularization_too_strong",),
    holdout=True,
    exhibits=all_of(weights_shrink(0.5), at_baseline(0.9)),
)
def explicit_l2_penalty_too_strong(seed: int) -> RunResult:
    """Wine MLP with a hand-written penalty ``loss + 0.3 * sum(w.pow(2).sum())``: the penalty wins."""
    x, y = wine()
    model = dense(13, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def penalised(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target) + 0.3 * sum(p.pow(2).sum() for p in model.parameters())

    return fit(model, opt, sampler(x, y, 16, seed), 200, penalised, y_all=y)


# ---------------------------------------------------------------------------------------------
# undertrained
# ---------------------------------------------------------------------------------------------


# "stopped too early" is a verdict on the finished run: it is due at the final check
@task_scenario(
    expected=("undertrained",),
    optimizer="SGD",
    exhibits=all_of(still_falling(0.15, 40)),
    max_delay=120,
)
def digits_stopped_while_falling(seed: int) -> RunResult:
    """Digits MLP, SGD lr 0.02 (healthy update ratios), stopped after 120 steps with the loss still falling fast."""
    x, y = digits()
    model = dense(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return fit(model, opt, sampler(x, y, 32, seed), 120, F.cross_entropy, y_all=y)


@task_scenario(
    expected=("undertrained",),
    family="rnn",
    holdout=True,
    exhibits=all_of(still_falling(0.15, 40)),
    max_delay=50,
)
def tiny_lm_stopped_early(seed: int) -> RunResult:
    """A GRU language model on Markov text, Adam 3e-3, stopped after 50 steps while the loss still drops fast."""
    x, y = lm_data(seed)
    model = TinyLM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 50, lm_loss, y_all=y)


# ---------------------------------------------------------------------------------------------
# lr_too_low (the loss creeps: not flat)
# ---------------------------------------------------------------------------------------------


@task_scenario(
    expected=("lr_too_low",),
    exhibits=all_of(update_ratio(below=2e-4, steps=(50, 10**9)), at_baseline(0.9)),
)
def adam_lr_1e5_creeping(seed: int) -> RunResult:
    """Digits MLP under Adam at lr 1e-5: updates ~7e-5 of the weights, the loss creeps down from ln 10."""
    x, y = digits()
    model = dense(64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    return fit(model, opt, sampler(x, y, 32, seed), 300, F.cross_entropy, y_all=y)


@task_scenario(
    expected=("lr_too_low",),
    optimizer="SGD",
    holdout=True,
    exhibits=all_of(update_ratio(below=3e-5, steps=(50, 10**9)), at_baseline(0.6)),
)
def sgd_lr_1e4_regression(seed: int) -> RunResult:
    """Diabetes regression (standardised targets), SGD lr 1e-4 without momentum: the loss creeps."""
    x, y = diabetes()
    y = (y - y.mean()) / y.std()
    model = dense(10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    return fit(model, opt, sampler(x, y, 32, seed), 300, mse_squeezed, y_all=y)


@task_scenario(
    expected=("lr_too_low",),
    family="cnn",
    exhibits=all_of(update_ratio(below=2e-4, steps=(50, 10**9)), at_baseline(0.9)),
)
def cnn_adam_lr_1e5(seed: int) -> RunResult:
    """Digits CNN under Adam at lr 1e-5 for 250 steps: the loss creeps down."""
    x, y = digits()
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    return fit(model, opt, sampler(x.view(-1, 1, 8, 8), y, 32, seed), 250, F.cross_entropy, y_all=y)


# ---------------------------------------------------------------------------------------------
# Healthy look-alikes
# ---------------------------------------------------------------------------------------------


@task_scenario(exhibits=below_baseline(0.3))
def healthy_sigmoid_bce_probabilities(seed: int) -> RunResult:
    """Breast cancer: ``Dense(1, sigmoid)`` + ``BCELoss`` (a sigmoid output before BCE is right)."""
    x, y = breast_cancer()
    model = dense(30, 1, final=nn.Sigmoid())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 200, bce_squeezed, y_all=y)


@task_scenario(exhibits=below_baseline(0.3), holdout=True)
def healthy_bce_with_logits(seed: int) -> RunResult:
    """Breast cancer: logits + ``BCEWithLogitsLoss`` (the twin of ``sigmoid_before_bce_with_logits``)."""
    x, y = breast_cancer()
    model = dense(30, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 200, bce_logits_squeezed, y_all=y)


@task_scenario(exhibits=below_baseline(0.5))
def healthy_sigmoid_output_unit_targets(seed: int) -> RunResult:
    """Diabetes regression with min-max scaled targets in [0, 1] and a sigmoid output (MSE): a fit range."""
    x, y = diabetes()
    y = (y - y.min()) / (y.max() - y.min())
    model = dense(10, 1, final=nn.Sigmoid())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 250, mse_squeezed, y_all=y)


@task_scenario(exhibits=below_baseline(0.7))
def healthy_standardised_regression(seed: int) -> RunResult:
    """Diabetes regression, standardised targets, linear output, ``squeeze(1)`` before MSE (the broadcast fix)."""
    x, y = diabetes()
    y = (y - y.mean()) / y.std()
    model = dense(10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 250, mse_squeezed, y_all=y)


@task_scenario(exhibits=below_baseline(0.5), holdout=True)
def healthy_l1_moderate_targets(seed: int) -> RunResult:
    """Synthetic regression with L1 loss on O(1) targets (mean 3, std 1.5; left unscaled, as people do)."""
    gen = torch.Generator().manual_seed(seed + 6)
    x = torch.randn(1024, 8, generator=gen)
    y = 3.0 + 1.5 * torch.tanh(x @ torch.randn(8, generator=gen) / 2) + 0.05 * torch.randn(1024, generator=gen)
    model = dense(8, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return fit(model, opt, sampler(x, y, 64, seed), 250, l1_squeezed, y_all=y)


@task_scenario(exhibits=trains(0.5))
def healthy_mse_on_one_hot_by_choice(seed: int) -> RunResult:
    """Iris with one-hot targets and a softmax output trained with MSE (a legitimate, if unusual, choice)."""
    x, y = iris()
    onehot = F.one_hot(y, 3).float()
    model = dense(4, 3, hidden=(16,), final=nn.Softmax(dim=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return fit(model, opt, sampler(x, onehot, 16, seed), 200, F.mse_loss, y_all=onehot)


@task_scenario(exhibits=below_baseline(0.7))
def healthy_multilabel_bce_with_logits(seed: int) -> RunResult:
    """Multi-label tags with five logits and ``BCEWithLogitsLoss`` (the twin of ``mse_on_softmax_multilabel``)."""
    x, y = multilabel(1024, seed)
    model = dense(20, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 64, seed), 250, F.binary_cross_entropy_with_logits, y_all=y)


@task_scenario(optimizer="SGD", exhibits=below_baseline(0.2))
def healthy_digits_softmax_free(seed: int) -> RunResult:
    """Digits MLP with raw logits and ``CrossEntropyLoss``, SGD lr 0.1 momentum 0.9 (the softmax twin's fix)."""
    x, y = digits()
    model = dense(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return fit(model, opt, sampler(x, y, 32, seed), 250, F.cross_entropy, y_all=y)


@task_scenario(family="rnn", exhibits=below_baseline(0.5))
def healthy_tiny_lm(seed: int) -> RunResult:
    """GRU language model on Markov text, Adam 3e-3, 300 steps: the loss nears the chain's ln 2."""
    x, y = lm_data(seed)
    model = TinyLM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return fit(model, opt, sampler(x, y, 32, seed), 300, lm_loss, y_all=y)


class HFStyleClassifier(nn.Module):
    """A model that computes its own loss and returns a dict ``{"loss", "logits"}`` (Hugging Face style)."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.body = dense(features, classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.body(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


@task_scenario(optimizer="AdamW", exhibits=below_baseline(0.3), holdout=True)
def healthy_model_returns_its_loss(seed: int) -> RunResult:
    """Wine classifier whose forward returns ``{"loss", "logits"}``; the loop uses ``out["loss"]`` (AdamW)."""
    x, y = wine()
    model = HFStyleClassifier(13, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = sampler(x, y, 16, seed)
    rows: list[dict[str, float]] = []
    task: dict[str, Any] = {}
    with nndiag.Monitor(model, opt, log_dir=None, **_NO_ADVICE) as mon:
        for step in range(200):
            xb, yb = next(batches)
            out = model(xb, labels=yb)
            loss = out["loss"]
            if step == 0:
                task = _task_facts(loss, y)
            if step % 10 == 0 or step == 199:
                rows.append(_probe_row(step, loss, out, yb, model))
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss, target=yb)
        mon.close()
        return TaskRunResult(mon.history, mon.session.facts, mon.steps, pd.DataFrame(rows), task)


class Encoder(nn.Module):
    """A two-layer MLP encoder with L2-normalised embeddings."""

    def __init__(self, features: int, dim: int = 16) -> None:
        super().__init__()
        self.net = dense(features, dim, hidden=(64,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


@task_scenario(exhibits=trains(0.7))
def healthy_contrastive_info_nce(seed: int) -> RunResult:
    """SimCLR-style InfoNCE on two noisy views of digits: ``cross_entropy(z1 @ z2.T / 0.1, arange(B))``."""
    x, y = digits()
    model = Encoder(64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed + 8)

    def views(b: torch.Tensor) -> torch.Tensor:
        return torch.cat([b + 0.1 * torch.randn(b.shape, generator=gen), b + 0.1 * torch.randn(b.shape, generator=gen)])

    def info_nce(z: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        z1, z2 = z.chunk(2)
        return F.cross_entropy(z1 @ z2.T / 0.1, torch.arange(len(z1)))

    batches = ((views(xb), yb) for xb, yb in sampler(x, y, 64, seed))
    return fit(model, opt, batches, 200, info_nce, y_all=torch.arange(64))


@task_scenario(optimizer="AdamW", exhibits=below_baseline(0.2))
def healthy_adamw_weight_decay(seed: int) -> RunResult:
    """Digits MLP with ``AdamW(lr=1e-3, weight_decay=0.01)`` (its default) and dropout 0.2."""
    x, y = digits()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return fit(model, opt, sampler(x, y, 32, seed), 300, F.cross_entropy, y_all=y)


@task_scenario(optimizer="SGD", exhibits=below_baseline(0.3), holdout=True)
def healthy_sgd_weight_decay_1e4(seed: int) -> RunResult:
    """Breast cancer with ``SGD(lr=0.05, momentum=0.9, weight_decay=1e-4)``: weights shrink a little, fits."""
    x, y = breast_cancer()
    model = dense(30, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return fit(model, opt, sampler(x, y, 32, seed), 250, bce_logits_squeezed, y_all=y)


@task_scenario(optimizer="SGD", exhibits=all_of(below_baseline(0.1), settled(0.05, 60)))
def healthy_converged_then_stopped(seed: int) -> RunResult:
    """Iris MLP, SGD lr 0.05 momentum 0.9 for 300 steps: converged well before the end (not undertrained)."""
    x, y = iris()
    model = dense(4, 3, hidden=(16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return fit(model, opt, sampler(x, y, 32, seed), 300, F.cross_entropy, y_all=y)


@task_scenario(optimizer="SGD", exhibits=below_baseline(0.3))
def healthy_cosine_decay_to_small_lr(seed: int) -> RunResult:
    """Digits MLP, SGD lr 0.05 with cosine decay to ~0 over 250 steps (tiny updates at the end by design)."""
    x, y = digits()
    model = dense(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=250)
    return fit(model, opt, sampler(x, y, 32, seed), 250, F.cross_entropy, y_all=y, scheduler=sched)


@task_scenario(optimizer="Adam", exhibits=below_baseline(0.6))
def healthy_imbalanced_binary(seed: int) -> RunResult:
    """Binary task with 10% positives (baseline 0.33), logits + ``BCEWithLogitsLoss``: well below the prior."""
    gen = torch.Generator().manual_seed(seed + 9)
    x = torch.randn(2048, 10, generator=gen)
    score = x @ torch.randn(10, generator=gen)
    y = (score > torch.quantile(score, 0.9)).float()
    model = dense(10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return fit(model, opt, sampler(x, y, 64, seed), 250, bce_logits_squeezed, y_all=y)


@task_scenario(optimizer="Adam", holdout=True, exhibits=below_baseline(0.7))
def healthy_regression_lightning(seed: int) -> RunResult:
    """Lightning: diabetes regression with standardised targets, ``(x, y)`` batches, Adam 1e-3, MSE."""
    x, y = diabetes()
    y = (y - y.mean()) / y.std()
    return fit_lightning_probed(dense(10, 1), mse_squeezed, lambda p: torch.optim.Adam(p, lr=1e-3), x, y, 32, 200, seed)


@task_scenario(
    expected=("output_activation_mismatch",),
    holdout=True,
    exhibits=all_of(probe_all("o_min", above=-1e-6), probe_all("t_min", below=-1.0)),
)
def relu_output_negative_targets_lightning(seed: int) -> RunResult:
    """Lightning: diabetes regression with standardised targets and a final ``nn.ReLU`` (no negative outputs)."""
    x, y = diabetes()
    y = (y - y.mean()) / y.std()
    return fit_lightning_probed(
        dense(10, 1, final=nn.ReLU()), mse_squeezed, lambda p: torch.optim.Adam(p, lr=1e-3), x, y, 32, 200, seed
    )


# The healthy scenarios that look like each new fault (each code's rule must stay quiet on them).
LOOKALIKES: dict[str, tuple[str, ...]] = {
    "output_activation_mismatch": (
        "healthy_sigmoid_bce_probabilities",
        "healthy_sigmoid_output_unit_targets",
        "healthy_mse_on_one_hot_by_choice",
        "healthy_bce_with_logits",
        "healthy_digits_softmax_free",
    ),
    "loss_mismatch": (
        "healthy_mse_on_one_hot_by_choice",
        "healthy_standardised_regression",
        "healthy_multilabel_bce_with_logits",
        "healthy_contrastive_info_nce",
        "healthy_model_returns_its_loss",
    ),
    "target_not_normalized": (
        "healthy_l1_moderate_targets",
        "healthy_sigmoid_output_unit_targets",
        "healthy_standardised_regression",
        "healthy_regression_lightning",
    ),
    "loss_at_baseline": (
        "healthy_imbalanced_binary",
        "healthy_standardised_regression",
        "healthy_contrastive_info_nce",
        "healthy_tiny_lm",
    ),
    "regularization_too_strong": ("healthy_adamw_weight_decay", "healthy_sgd_weight_decay_1e4"),
    "undertrained": ("healthy_converged_then_stopped", "healthy_cosine_decay_to_small_lr"),
    "lr_too_low": ("healthy_cosine_decay_to_small_lr", "healthy_converged_then_stopped"),
    "lr_too_high": ("healthy_digits_softmax_free",),
}

# The new codes of issue 15 (``lr_too_low`` in its broader form).
TASK_CODES: tuple[str, ...] = (
    "output_activation_mismatch",
    "loss_mismatch",
    "target_not_normalized",
    "loss_at_baseline",
    "regularization_too_strong",
    "undertrained",
    "lr_too_low",
)
