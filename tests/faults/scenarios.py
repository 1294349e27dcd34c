"""Training scenarios with one known fault each, plus healthy controls.

Every scenario is a function ``fn(seed) -> RunResult`` that builds a tiny model, synthetic data
and an optimizer, trains for a few hundred optimizer steps under :class:`nndiag.Monitor`
(``log_dir=None``: memory only) or, for a few, under Lightning with
:class:`nndiag.DiagnosticsCallback`, and returns the recorded history and model facts.

Metadata (see :class:`Scenario`):

* ``expected``: the codes that correctly name the cause, the primary cause first. Symptoms are
  only listed where they are an acceptable name for the cause (e.g. ``nonfinite_loss`` for a NaN
  that the run itself produced).
* ``onset_step``: the optimizer step at which the fault begins: 0 for faults present from
  initialisation; the injection step for faults injected later (lr raised, NaN batch); for the
  two emergent faults (overfitting, underfitting) the step by which the pathology is
  established in the recorded statistics (documented on the scenario).
* ``holdout``: kept out of threshold tuning (about 30% of the scenarios, faulty and healthy).

Nothing is downloaded; everything is generated from the seed.
"""

from __future__ import annotations

import inspect
import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

import nndiag
from nndiag.demo.models import LSTMClassifier, blobs, cnn_bn, images, mlp, sequences

# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What a scenario recorded."""

    history: pd.DataFrame
    facts: dict[str, Any]
    steps: int


Evidence = Callable[["RunResult"], tuple[bool, str]]


@dataclass(frozen=True)
class Scenario:
    """One training scenario and what the advisors should say about it."""

    name: str
    fn: Callable[[int], RunResult]
    expected: tuple[str, ...]
    onset_step: int
    family: str
    optimizer: str
    holdout: bool
    healthy: bool
    description: str
    exhibits: Evidence
    max_delay: int = 50  # optimizer steps from onset to detection (the product target; see faults.runner)

    def check_exhibits(self, result: RunResult) -> tuple[bool, str]:
        """Whether the run really shows the fault (or, healthy, really trains), from the raw statistics."""
        return self.exhibits(result)

    @property
    def primary(self) -> str | None:
        """The primary cause (first expected code), ``None`` for a healthy scenario."""
        return self.expected[0] if self.expected else None

    def run(self, seed: int = 0) -> RunResult:
        """Train the scenario once with ``seed`` (single-threaded, deterministic)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(seed)
            return self.fn(seed)
        finally:
            torch.set_num_threads(threads)


SCENARIOS: list[Scenario] = []

# Codes reported at info severity: a detection at info counts for them.
INFO_CODES = frozenset({"sigmoid_hidden_layer", "underfitting", "undertrained"})


def scenario(
    *,
    expected: tuple[str, ...] = (),
    onset_step: int = 0,
    family: str = "mlp",
    optimizer: str = "SGD",
    holdout: bool = False,
    exhibits: Evidence | None = None,
    max_delay: int = 50,
    registry: list[Scenario] | None = None,
) -> Callable[[Callable[[int], RunResult]], Callable[[int], RunResult]]:
    """Register ``fn`` as a scenario named after the function; the docstring's first line describes it.

    ``exhibits`` checks the recorded statistics for the fault itself (rule-independent); healthy
    scenarios default to :func:`trains`. ``registry``: the list to add it to (default :data:`SCENARIOS`).
    """

    def register(fn: Callable[[int], RunResult]) -> Callable[[int], RunResult]:
        doc = (fn.__doc__ or "").strip().splitlines()
        (SCENARIOS if registry is None else registry).append(
            Scenario(
                name=fn.__name__,
                fn=fn,
                expected=tuple(expected),
                onset_step=onset_step,
                family=family,
                optimizer=optimizer,
                holdout=holdout,
                healthy=not expected,
                description=doc[0] if doc else "",
                exhibits=exhibits or trains(),
                max_delay=max_delay,
            )
        )
        return fn

    return register


def get(name: str) -> Scenario:
    """The scenario called ``name``."""
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Evidence: rule-independent checks that a run really shows its fault
# ---------------------------------------------------------------------------------------------


def loss_series(h: pd.DataFrame) -> pd.Series:
    """The per-step training loss."""
    return h[h.stat == "loss"].set_index("step").value.sort_index()


def stat_rows(h: pd.DataFrame, stat: str, layer: str | None = None) -> pd.DataFrame:
    """Rows of one statistic (optionally one layer)."""
    sel = h[h.stat == stat]
    return sel if layer is None else sel[sel.layer == layer]


def _finite(v: pd.Series) -> pd.Series:
    return v[v.map(math.isfinite)]


def trains(factor: float = 0.5) -> Evidence:
    """Healthy: the loss stays finite and its last-20-step mean is below ``factor`` x its first-10-step mean."""

    def check(r: RunResult) -> tuple[bool, str]:
        loss = loss_series(r.history)
        start, end = float(loss.iloc[:10].mean()), float(loss.iloc[-20:].mean())
        ok = bool(loss.map(math.isfinite).all()) and end < factor * start
        return ok, f"loss first10={start:.4g} last20={end:.4g} (needs < {factor} x first10, all finite)"

    return check


def loss_nonfinite_at(first: int, by: int | None = None) -> Evidence:
    """The loss is finite before step ``first`` and non-finite at some step in ``[first, by]``."""
    last = first if by is None else by

    def check(r: RunResult) -> tuple[bool, str]:
        loss = loss_series(r.history)
        bad = loss[~loss.map(math.isfinite)]
        step = int(bad.index[0]) if len(bad) else None
        return step is not None and first <= step <= last, f"first non-finite loss at step {step}"

    return check


def loss_window(lo: int, hi: int, *, above: float | None = None, below: float | None = None) -> Evidence:
    """The mean finite loss over steps ``[lo, hi)`` is above/below the given values (or non-finite)."""

    def check(r: RunResult) -> tuple[bool, str]:
        loss = loss_series(r.history)
        win = loss[(loss.index >= lo) & (loss.index < hi)]
        nonfinite = not bool(win.map(math.isfinite).all())
        mean = float(_finite(win).mean()) if len(_finite(win)) else math.inf
        ok = (above is None or mean > above or nonfinite) and (below is None or (mean < below and not nonfinite))
        return ok, f"mean loss over steps {lo}-{hi - 1} = {mean:.4g}{' (non-finite values)' if nonfinite else ''}"

    return check


def loss_flat(max_rel_drop: float = 0.05) -> Evidence:
    """The loss barely moves: (first10 - last20) / first10 below ``max_rel_drop``."""

    def check(r: RunResult) -> tuple[bool, str]:
        loss = loss_series(r.history)
        start, end = float(loss.iloc[:10].mean()), float(loss.iloc[-20:].mean())
        drop = (start - end) / start
        return drop < max_rel_drop, f"loss first10={start:.4g} last20={end:.4g}: relative drop {drop:.3f}"

    return check


def stat_extreme(
    stat: str,
    *,
    above: float | None = None,
    below: float | None = None,
    layer: str | None = None,
    steps: tuple[int, int] = (0, 10**9),
    agg: str = "max",
) -> Evidence:
    """``agg`` (max/min/median) of a statistic over ``steps`` (and one layer, or all layers) passes a bound."""

    def check(r: RunResult) -> tuple[bool, str]:
        rows = stat_rows(r.history, stat, layer)
        rows = rows[(rows.step >= steps[0]) & (rows.step <= steps[1])]
        v = float(getattr(rows.value, agg)()) if len(rows) else math.nan
        ok = (above is None or v > above) and (below is None or v < below)
        return (
            ok,
            f"{agg} {stat}{f' of {layer}' if layer else ''} over steps {steps[0]}-{min(steps[1], 10**6)} = {v:.3g}",
        )

    return check


def grad_ratio_first_last(*, above: float | None = None, below: float | None = None, step: int = 0) -> Evidence:
    """First/last weight-gradient-norm ratio at ``step`` (weights in recorded order) passes a bound."""

    def check(r: RunResult) -> tuple[bool, str]:
        rows = stat_rows(r.history, "grad_norm")
        rows = rows[(rows.step == step) & rows.layer.str.endswith("weight")]
        order = {n: i for i, n in enumerate(r.facts.get("params", {}))}
        rows = rows.assign(o=rows.layer.map(order)).sort_values("o")
        ratio = float(rows.value.iloc[0] / rows.value.iloc[-1]) if len(rows) >= 2 else math.nan
        ok = (above is None or ratio > above or not math.isfinite(ratio)) and (below is None or ratio < below)
        return ok, f"grad-norm ratio first/last weight at step {step} = {ratio:.3g}"

    return check


def facts_say(description: str, pred: Callable[[dict[str, Any]], bool]) -> Evidence:
    """A predicate over the model facts."""

    def check(r: RunResult) -> tuple[bool, str]:
        return bool(pred(r.facts)), description

    return check


def all_of(*checks: Evidence) -> Evidence:
    """Every check holds."""

    def check(r: RunResult) -> tuple[bool, str]:
        results = [c(r) for c in checks]
        return all(ok for ok, _ in results), "; ".join(msg for _, msg in results)

    return check


def val_rises(factor: float) -> Evidence:
    """Final validation loss above ``factor`` x its minimum while the training loss is far below it."""

    def check(r: RunResult) -> tuple[bool, str]:
        val = stat_rows(r.history, "val_loss").value
        train_end = float(loss_series(r.history).iloc[-20:].mean())
        if val.empty:
            return False, "no val_loss recorded"
        last, low = float(val.iloc[-1]), float(val.min())
        ok = last > factor * low and train_end < 0.5 * last
        return ok, f"val_loss min={low:.3g} last={last:.3g}, train loss last20={train_end:.3g}"

    return check


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

# The harness replays the Advisor itself over the growing history; the adapters' own advice
# loop (where this nndiag version has one) is switched off so it neither prints nor costs time.
_NO_ADVICE: dict[str, Any] = {"diagnose": False} if "diagnose" in inspect.signature(nndiag.Monitor).parameters else {}


def sampler(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random mini-batches (with a generator of their own)."""
    gen = torch.Generator().manual_seed(seed + 1000)
    while True:
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        yield x[idx], y[idx]


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    *,
    clip: float | None = None,
    before_step: Callable[[int, torch.optim.Optimizer, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    val_every: int = 10,
) -> RunResult:
    """A plain PyTorch loop under ``nndiag.Monitor``.

    ``before_step(step, opt, x, y)`` may change the optimizer or return a modified batch (fault
    injection). With ``val``, the validation loss is recorded every ``val_every`` steps.
    """
    with nndiag.Monitor(model, opt, log_dir=None, **_NO_ADVICE) as mon:
        for step in range(steps):
            x, y = next(batches)
            if before_step is not None:
                x = before_step(step, opt, x, y)
            model.train()
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            mon.step(loss, target=y)  # as the README shows: the loss tensor (its graph) and the targets
            if val is not None and (step + 1) % val_every == 0:
                model.eval()
                with torch.no_grad():
                    mon.record("val_loss", float(loss_fn(model(val[0]), val[1])))
        mon.close()
        return RunResult(mon.history, mon.session.facts, mon.steps)


def fit_lightning(
    net: nn.Module,
    forward: Callable[[nn.Module, Any], torch.Tensor],
    make_opt: Callable[[Any], torch.optim.Optimizer],
    train_data: torch.utils.data.Dataset,
    batch: int,
    steps: int,
    seed: int,
    *,
    val_data: torch.utils.data.Dataset | None = None,
    val_every: int = 10,
    clip: float | None = None,
) -> RunResult:
    """Train ``net`` with a Lightning ``Trainer`` and :class:`nndiag.DiagnosticsCallback`.

    ``forward(net, batch)`` returns the loss of a batch (training and validation alike).
    """
    import lightning.pytorch as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, b: Any, batch_idx: int) -> torch.Tensor:
            return forward(self.net, b)

        def validation_step(self, b: Any, batch_idx: int) -> None:
            self.log("val_loss", forward(self.net, b))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return make_opt(self.net.parameters())

    gen = torch.Generator().manual_seed(seed + 1000)
    train_loader = torch.utils.data.DataLoader(train_data, batch_size=batch, shuffle=True, generator=gen)
    val_loader = (
        torch.utils.data.DataLoader(val_data, batch_size=len(val_data))  # type: ignore[arg-type]
        if val_data is not None
        else None
    )
    cb = nndiag.DiagnosticsCallback(store=False, tensorboard=False, **_NO_ADVICE)
    for name in list(logging.root.manager.loggerDict):  # after the callback imported both Lightning packages
        if name.startswith(("lightning", "pytorch_lightning")):
            logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            callbacks=[cb],
            max_steps=steps,
            max_epochs=-1,
            accelerator="cpu",
            devices=1,
            logger=False,
            default_root_dir=root,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            gradient_clip_val=clip,
            val_check_interval=val_every if val_loader is not None else None,
            check_val_every_n_epoch=None if val_loader is not None else 1,
            limit_val_batches=1 if val_loader is not None else 0,
            deterministic=False,
        )
        trainer.fit(Module(), train_loader, val_loader)
    assert cb.session is not None
    return RunResult(cb.history, cb.session.facts, cb.session.step)


def init_linears(model: nn.Module, weight: Callable[[torch.Tensor], Any], bias: float | None = 0.0) -> None:
    """Re-initialise every Linear layer: ``weight(w)`` in place, biases constant (``None``: untouched)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                weight(m.weight)
                if bias is not None and m.bias is not None:
                    m.bias.fill_(bias)


def tanh_net(features: int, classes: int, hidden: int, depth: int) -> nn.Sequential:
    """``depth`` Linear+Tanh blocks, then a Linear classifier."""
    return mlp(features, classes, hidden=hidden, depth=depth, act=nn.Tanh)


def noisy_blobs(n: int, seed: int, features: int = 20, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Blobs with heavy overlap (a harder problem than :func:`blobs`)."""
    x, y = blobs(n, features=features, classes=classes, seed=seed)
    gen = torch.Generator().manual_seed(seed + 7)
    x = x + 1.5 * torch.randn(x.shape, generator=gen)
    return (x - x.mean(0)) / x.std(0), y


# ---------------------------------------------------------------------------------------------
# Faulty scenarios
# ---------------------------------------------------------------------------------------------


@scenario(
    expected=("lr_too_high", "loss_diverging", "nonfinite_loss", "exploding_gradients"),
    exhibits=loss_nonfinite_at(1, 20),
)
def sgd_lr_far_too_high(seed: int) -> RunResult:
    """SGD at lr=5 on a ReLU MLP: the loss explodes within a few steps."""
    x, y = blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=3)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    return train(model, opt, sampler(x, y, 64, seed), 150)


@scenario(
    expected=("lr_too_high", "loss_oscillating", "loss_diverging"),
    optimizer="Adam",
    exhibits=all_of(loss_window(100, 200, above=3.0), stat_extreme("update_ratio", above=0.03, agg="median")),
)
def adam_lr_far_too_high(seed: int) -> RunResult:
    """Adam at lr=1.0 on a tanh MLP (noisy blobs): the loss jumps around 4-7, far above ln 4 (lr 1e-3: 0.2)."""
    x, y = noisy_blobs(1024, seed=seed)
    model = tanh_net(20, 4, hidden=64, depth=3)
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    return train(model, opt, sampler(x, y, 64, seed), 200)


@scenario(
    expected=("lr_too_high", "loss_oscillating", "loss_diverging", "exploding_gradients"),
    family="lstm",
    optimizer="SGD",
    holdout=True,
    exhibits=loss_window(100, 200, above=2.0),
)
def lstm_sgd_lr_far_too_high(seed: int) -> RunResult:
    """SGD at lr=20 on the LSTM classifier: the loss bounces around 4-9 for a 2-class problem (ln 2 = 0.69)."""
    x, y = sequences(512, seed=seed)
    model = LSTMClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=20.0)
    return train(model, opt, sampler(x, y, 32, seed), 200)


@scenario(
    expected=("lr_too_low", "loss_not_decreasing", "weights_not_updating"),
    exhibits=all_of(stat_extreme("update_ratio", below=1e-5), loss_flat(0.05)),
)
def sgd_lr_far_too_low(seed: int) -> RunResult:
    """SGD at lr=1e-6 on a ReLU MLP: update/weight ratios around 1e-7, the loss does not move."""
    x, y = blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    return train(model, opt, sampler(x, y, 64, seed), 200)


@scenario(
    expected=("lr_too_low", "loss_not_decreasing", "weights_not_updating"),
    family="lstm",
    optimizer="Adam",
    exhibits=all_of(stat_extreme("update_ratio", below=1e-5), loss_flat(0.1)),
)
def lstm_adam_lr_far_too_low(seed: int) -> RunResult:
    """Adam at lr=1e-7 on the LSTM classifier: nothing moves."""
    x, y = sequences(512, seed=seed)
    model = LSTMClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-7)
    return train(model, opt, sampler(x, y, 32, seed), 200)


@scenario(
    expected=("nonfinite_input", "nonfinite_loss", "nonfinite_activations"),
    onset_step=80,
    optimizer="SGD",
    exhibits=all_of(loss_nonfinite_at(80), stat_extreme("nonfinite", above=0, layer="input", steps=(80, 80))),
)
def nan_in_data_at_step_80(seed: int) -> RunResult:
    """One NaN feature in the batch of step 80 (a corrupt sample); SGD spreads it into every weight."""
    x, y = blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def inject(step: int, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if step == 80:
            xb = xb.clone()
            xb[3, 5] = math.nan
        return xb

    return train(model, opt, sampler(x, y, 64, seed), 160, before_step=inject)


@scenario(
    expected=("nonfinite_input", "nonfinite_loss", "nonfinite_activations"),
    onset_step=120,
    family="cnn_bn",
    optimizer="Adam",
    holdout=True,
    exhibits=all_of(loss_nonfinite_at(120), stat_extreme("nonfinite", above=0, layer="input", steps=(120, 120))),
)
def inf_in_images_at_step_120(seed: int) -> RunResult:
    """An Inf pixel in the batch of step 120 on the BatchNorm CNN (Adam)."""
    x, y = images(512, seed=seed)
    model = cnn_bn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def inject(step: int, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if step == 120:
            xb = xb.clone()
            xb[0, 1, 4, 4] = math.inf
        return xb

    return train(model, opt, sampler(x, y, 32, seed), 180, before_step=inject)


@scenario(
    expected=("nonfinite_loss", "nonfinite_activations"),
    optimizer="SGD",
    exhibits=all_of(loss_nonfinite_at(0, 10), stat_extreme("nonfinite", below=1, layer="input")),
)
def log_zero_in_loss(seed: int) -> RunResult:
    """Hand-written binary cross-entropy ``-(y log p + (1-y) log(1-p))`` on a sigmoid that saturates to exactly 1.

    The classifier's output layer is initialised 100x too large, so logits soon exceed ~17,
    ``1 - p`` rounds to 0 and ``0 * log(0)`` gives NaN within the first steps.
    """
    x, y4 = blobs(1024, seed=seed)
    y = (y4 % 2).float()
    model = mlp(20, 1, hidden=64, depth=2)
    head = model[-1]
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        head.weight.mul_(100.0)

    def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits.squeeze(1))
        return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return train(model, opt, sampler(x, y, 64, seed), 120, loss_fn=bce)


@scenario(
    expected=("activation_collapse", "vanishing_gradients", "poor_init_scale", "loss_not_decreasing"),
    exhibits=all_of(stat_extreme("act_std", below=1e-4, layer="19", steps=(0, 0)), loss_flat(0.02)),
)
def deep_tanh_small_init(seed: int) -> RunResult:
    """The lecture's 10-layer tanh net with W = 0.01*randn: activations shrink ~5x per layer to ~0."""
    x, y = blobs(1024, features=64, seed=seed)
    model = tanh_net(64, 4, hidden=256, depth=10)
    init_linears(model, lambda w: w.normal_(0.0, 0.01))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return train(model, opt, sampler(x, y, 64, seed), 200)


@scenario(
    expected=("saturated_activations", "poor_init_scale", "vanishing_gradients"),
    exhibits=stat_extreme("sat_frac", above=0.8, steps=(0, 0)),
)
def tanh_unit_normal_init(seed: int) -> RunResult:
    """A 6-layer tanh net with W = 1.0*randn: pre-activations ~N(0, 256), outputs piled up at +-1."""
    x, y = blobs(1024, features=64, seed=seed)
    model = tanh_net(64, 4, hidden=256, depth=6)
    init_linears(model, lambda w: w.normal_(0.0, 1.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return train(model, opt, sampler(x, y, 64, seed), 200)


@scenario(
    expected=("saturated_activations", "poor_init_scale", "vanishing_gradients"),
    optimizer="Adam",
    holdout=True,
    exhibits=stat_extreme("sat_frac", above=0.5, steps=(0, 0)),
)
def tanh_large_init_adam(seed: int) -> RunResult:
    """A 4-layer tanh net with W = 0.5*randn trained by Adam: most tanh outputs beyond +-0.99."""
    x, y = noisy_blobs(1024, seed=seed, features=32)
    model = tanh_net(32, 4, hidden=128, depth=4)
    init_linears(model, lambda w: w.normal_(0.0, 0.5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, sampler(x, y, 64, seed), 200)


@scenario(expected=("dead_units",), exhibits=stat_extreme("dead_frac", above=0.99, steps=(0, 0), agg="min"))
def relu_negative_bias(seed: int) -> RunResult:
    """ReLU MLP whose hidden biases start at -3: almost every unit's input is negative for every sample."""
    x, y = blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=3)
    with torch.no_grad():
        for m in list(model.modules())[1:-1]:
            if isinstance(m, nn.Linear):
                m.bias.fill_(-3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return train(model, opt, sampler(x, y, 64, seed), 200)


@scenario(
    expected=("dead_units", "lr_too_high"),
    optimizer="Adam",
    exhibits=stat_extreme("dead_frac", above=0.5, steps=(150, 200)),
)
def relu_killed_by_high_lr(seed: int) -> RunResult:
    """ReLU MLP under Adam at lr=0.5: the first violent steps leave most units of the deeper layers dead for good."""
    x, y = blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.5)
    return train(model, opt, sampler(x, y, 64, seed), 200)


@scenario(
    expected=("sigmoid_hidden_layer", "vanishing_gradients", "loss_not_decreasing"),
    exhibits=all_of(grad_ratio_first_last(below=1e-2), loss_flat(0.05)),
)
def sigmoid_hidden_layers(seed: int) -> RunResult:
    """Five sigmoid hidden layers (SGD): gradients shrink >=4x per layer, the first layers barely learn."""
    x, y = blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=5, act=nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return train(model, opt, sampler(x, y, 64, seed), 200)


@scenario(
    expected=("weights_not_updating",),
    optimizer="Adam",
    exhibits=stat_extreme("update_ratio", below=1e-12, layer="0.weight"),
)
def params_missing_from_optimizer(seed: int) -> RunResult:
    """The optimizer gets only the classifier's parameters (``model[-1].parameters()``); the rest never change."""
    x, y = blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=3)
    opt = torch.optim.Adam(model[-1].parameters(), lr=1e-3)
    return train(model, opt, sampler(x, y, 64, seed), 150)


@scenario(
    expected=("weights_not_updating",),
    family="lstm",
    optimizer="SGD",
    holdout=True,
    exhibits=stat_extreme("update_ratio", below=1e-12, layer="lstm.weight_ih_l0"),
)
def lstm_replaced_after_optimizer(seed: int) -> RunResult:
    """The LSTM layer is replaced after the optimizer was built: the new LSTM's weights get gradients, never updates."""
    x, y = sequences(512, seed=seed)
    model = LSTMClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.lstm = nn.LSTM(32, 32, batch_first=True)  # e.g. re-created with another config after the optimizer
    return train(model, opt, sampler(x, y, 32, seed), 150)


@scenario(
    expected=("symmetric_init",),
    exhibits=facts_say("0.weight starts with identical units", lambda f: f["init"]["0.weight"]["units_identical"]),
)
def constant_init(seed: int) -> RunResult:
    """Every Linear weight initialised to the constant 0.05: all hidden units stay identical."""
    x, y = blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=3)
    init_linears(model, lambda w: w.fill_(0.05))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return train(model, opt, sampler(x, y, 64, seed), 150)


@scenario(
    expected=("symmetric_init",),
    optimizer="Adam",
    exhibits=facts_say("0.weight starts with identical units", lambda f: f["init"]["0.weight"]["units_identical"]),
)
def zero_init_tanh(seed: int) -> RunResult:
    """All-zero hidden weights in a tanh MLP (Adam): symmetry is never broken."""
    x, y = blobs(1024, seed=seed)
    model = tanh_net(20, 4, hidden=64, depth=2)
    with torch.no_grad():
        for m in list(model.modules())[1:-1]:
            if isinstance(m, nn.Linear):
                m.weight.zero_()
                m.bias.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, sampler(x, y, 64, seed), 150)


def raw_pixels(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`images` rescaled to integer pixel values 0..255 (what a forgotten ``/255`` and normalisation give)."""
    x, y = images(n, seed=seed)
    lo, hi = x.min(), x.max()
    return ((x - lo) / (hi - lo) * 255).round(), y


@scenario(
    expected=("input_not_normalized",),
    family="mlp",
    optimizer="Adam",
    exhibits=stat_extreme("act_mean", above=50, layer="input", agg="min"),
)
def raw_pixels_mlp(seed: int) -> RunResult:
    """Raw 0-255 pixels fed to an MLP (Adam, lr 1e-3): input mean ~128, std ~35."""
    x, y = raw_pixels(512, seed)
    model = nn.Sequential(nn.Flatten(), *mlp(3 * 16 * 16, 4, hidden=64, depth=2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, sampler(x, y, 32, seed), 150)


@scenario(
    expected=("input_not_normalized",),
    family="cnn_bn",
    optimizer="SGD",
    holdout=True,
    exhibits=stat_extreme("act_mean", above=50, layer="input", agg="min"),
)
def raw_pixels_cnn_bn(seed: int) -> RunResult:
    """Raw 0-255 pixels fed to the BatchNorm CNN (SGD): BatchNorm hides it downstream, the input stats show it."""
    x, y = raw_pixels(512, seed)
    model = cnn_bn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return train(model, opt, sampler(x, y, 32, seed), 150)


@scenario(
    expected=("poor_init_scale", "initial_loss_off"),
    optimizer="Adam",
    exhibits=loss_window(0, 1, above=10 * math.log(4)),
)
def relu_unit_normal_init(seed: int) -> RunResult:
    """ReLU MLP with W = 1.0*randn (He would be ~0.3 and ~0.18): logits in the hundreds at step 0."""
    x, y = blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=2)
    init_linears(model, lambda w: w.normal_(0.0, 1.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, sampler(x, y, 64, seed), 150)


@scenario(expected=("initial_loss_off",), optimizer="SGD", exhibits=loss_window(0, 1, above=3 * math.log(4)))
def biased_classifier_init(seed: int) -> RunResult:
    """The classifier bias starts at +8 on class 0: initial loss ~8 for a 4-class problem (ln 4 = 1.39)."""
    x, y = blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=2)
    head = model[-1]
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[0] = 8.0
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return train(model, opt, sampler(x, y, 64, seed), 150)


@scenario(expected=("overfitting",), optimizer="Adam", exhibits=val_rises(2.0))
def memorise_random_labels(seed: int) -> RunResult:
    """A wide MLP memorises 32 training samples whose labels carry no signal; validation loss climbs from the start.

    Onset 0: the labels are random, so every bit of fitting the training set is overfitting;
    the validation loss rises from the first validation check (every 10 steps).
    """
    gen = torch.Generator().manual_seed(seed + 3)
    x = torch.randn(32 + 512, 20, generator=gen)
    y = torch.randint(0, 4, (32 + 512,), generator=gen)
    model = mlp(20, 4, hidden=256, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return train(model, opt, sampler(x[:32], y[:32], 16, seed), 250, val=(x[32:], y[32:]), val_every=10)


@scenario(expected=("overfitting",), optimizer="AdamW", holdout=True, exhibits=val_rises(1.3))
def overfit_small_train_set_lightning(seed: int) -> RunResult:
    """Lightning: a wide MLP on 48 noisy-blob samples (AdamW, no weight decay); val loss bottoms out early and rises.

    Onset 0 (the training set is too small from the start); the validation loss bottoms out near step 40.
    """
    x, y = noisy_blobs(48 + 512, seed=seed)
    net = mlp(20, 4, hidden=256, depth=2)
    data = torch.utils.data.TensorDataset(x[:48], y[:48])
    val = torch.utils.data.TensorDataset(x[48:], y[48:])
    return fit_lightning(
        net,
        lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.0),
        data,
        16,
        250,
        seed,
        val_data=val,
    )


@scenario(
    expected=("batchnorm_small_batch",),
    family="cnn_bn",
    optimizer="SGD",
    exhibits=facts_say("batch size 4", lambda f: f.get("batch_size") == 4),
)
def batchnorm_batch_4(seed: int) -> RunResult:
    """The BatchNorm CNN trained with batches of 4: batch statistics are noise."""
    x, y = images(512, seed=seed)
    model = cnn_bn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return train(model, opt, sampler(x, y, 4, seed), 150)


@scenario(
    expected=("batchnorm_small_batch",),
    family="cnn_bn",
    optimizer="Adam",
    holdout=True,
    exhibits=facts_say("batch size 2", lambda f: f.get("batch_size") == 2),
)
def batchnorm_batch_2_lightning(seed: int) -> RunResult:
    """Lightning: the BatchNorm CNN with batches of 2 (Adam)."""
    x, y = images(256, seed=seed)
    return fit_lightning(
        cnn_bn(),
        lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        lambda p: torch.optim.Adam(p, lr=1e-3),
        torch.utils.data.TensorDataset(x, y),
        2,
        120,
        seed,
    )


@scenario(
    expected=("loss_diverging", "lr_too_high", "nonfinite_loss", "exploding_gradients"),
    onset_step=60,
    exhibits=all_of(loss_window(40, 60, below=0.5), loss_window(60, 80, above=10.0)),
)
def sgd_lr_raised_at_step_60(seed: int) -> RunResult:
    """SGD (lr 0.05, momentum 0.9) trains fine on noisy blobs; the lr is raised to 4.0 at step 60: the loss blows up."""
    x, y = noisy_blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def raise_lr(step: int, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if step == 60:
            for g in opt.param_groups:
                g["lr"] = 4.0
        return xb

    return train(model, opt, sampler(x, y, 64, seed), 160, before_step=raise_lr)


@scenario(
    expected=("loss_diverging", "lr_too_high", "loss_oscillating"),
    onset_step=80,
    optimizer="Adam",
    holdout=True,
    exhibits=all_of(loss_window(60, 80, below=0.6), loss_window(100, 180, above=1.5)),
)
def adam_lr_raised_at_step_80(seed: int) -> RunResult:
    """Adam at 1e-3 until step 80, then 1.0 (warm-up misconfigured), noisy blobs: the loss jumps up and stays high."""
    x, y = noisy_blobs(1024, seed=seed)
    model = tanh_net(20, 4, hidden=64, depth=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def raise_lr(step: int, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if step == 80:
            for g in opt.param_groups:
                g["lr"] = 1.0
        return xb

    return train(model, opt, sampler(x, y, 64, seed), 180, before_step=raise_lr)


@scenario(
    expected=("underfitting", "loss_not_decreasing"),
    onset_step=50,
    optimizer="Adam",
    exhibits=all_of(loss_window(200, 250, above=0.6), loss_flat(0.2)),
)
def linear_model_on_rings(seed: int) -> RunResult:
    """A linear classifier on concentric rings (not linearly separable): loss plateaus near ln 2.

    Onset 50: the loss reaches its plateau by about step 50 (Adam, lr 1e-2); a validation loss
    equal to the training loss is recorded every 10 steps.
    """
    gen = torch.Generator().manual_seed(seed + 5)
    n = 1024
    y = torch.randint(0, 2, (n,), generator=gen)
    r = 1.0 + 1.0 * y.float() + 0.15 * torch.randn(n, generator=gen)
    theta = 2 * math.pi * torch.rand(n, generator=gen)
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1)
    x = (x - x.mean(0)) / x.std(0)
    model = nn.Sequential(nn.Linear(2, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return train(model, opt, sampler(x[:768], y[:768], 64, seed), 250, val=(x[768:], y[768:]))


@scenario(
    expected=("exploding_gradients", "poor_init_scale", "nonfinite_loss"),
    optimizer="SGD",
    exhibits=stat_extreme("grad_norm_total", above=1e4, steps=(0, 0)),
)
def deep_relu_no_norm_large_init(seed: int) -> RunResult:
    """16 Linear+ReLU layers, no normalisation, W std 1.6x He: gradient norm 3e4, then 3e7 after one step, then NaN."""
    x, y = blobs(1024, features=64, seed=seed)
    model = mlp(64, 4, hidden=64, depth=16)
    init_linears(model, lambda w: w.normal_(0.0, 1.6 * math.sqrt(2.0 / w.shape[1])))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    return train(model, opt, sampler(x, y, 64, seed), 150)


class RNNClassifier(nn.Module):
    """Embedding -> vanilla ReLU RNN -> Linear on the last hidden state."""

    def __init__(self, vocab: int = 16, classes: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.RNN(hidden, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])


@scenario(
    expected=("exploding_gradients", "nonfinite_loss", "poor_init_scale"),
    family="lstm",
    optimizer="SGD",
    holdout=True,
    exhibits=stat_extreme("grad_norm_total", above=1e4, steps=(0, 0)),
)
def rnn_large_recurrent_weights(seed: int) -> RunResult:
    """A ReLU RNN over 30 time steps whose recurrent matrix is 2.5x orthogonal: gradient norm >5e4, then Inf/NaN."""
    x, y = sequences(512, length=30, seed=seed)
    model = RNNClassifier()
    with torch.no_grad():
        w = torch.linalg.qr(torch.randn(32, 32))[0]  # orthogonal: every singular value 1
        model.rnn.weight_hh_l0.copy_(2.5 * w)  # type: ignore[operator]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    return train(model, opt, sampler(x, y, 32, seed), 150)


# ---------------------------------------------------------------------------------------------
# Healthy scenarios
# ---------------------------------------------------------------------------------------------


@scenario(optimizer="SGD")
def healthy_mlp_sgd_momentum(seed: int) -> RunResult:
    """ReLU MLP on blobs, SGD lr 0.05 momentum 0.9: converges to ~0 loss."""
    x, y = blobs(1024, seed=seed)
    model = mlp(20, 4, hidden=64, depth=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return train(model, opt, sampler(x, y, 64, seed), 300)


@scenario(optimizer="Adam")
def healthy_tanh_mlp_adam_clipped(seed: int) -> RunResult:
    """Tanh MLP on noisy blobs, Adam lr 1e-3 with gradient clipping at 1.0, validation loss recorded."""
    x, y = noisy_blobs(2048, seed=seed)
    model = tanh_net(20, 4, hidden=64, depth=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(
        model, opt, sampler(x[:1536], y[:1536], 64, seed), 300, clip=1.0, val=(x[1536:], y[1536:]), val_every=20
    )


@scenario(family="cnn_bn", optimizer="AdamW")
def healthy_cnn_bn_adamw(seed: int) -> RunResult:
    """The BatchNorm CNN on synthetic images, AdamW lr 1e-3, batch 32."""
    x, y = images(512, seed=seed)
    model = cnn_bn()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return train(model, opt, sampler(x, y, 32, seed), 200)


@scenario(family="cnn_bn", optimizer="SGD", holdout=True)
def healthy_cnn_bn_sgd_lightning(seed: int) -> RunResult:
    """Lightning: the BatchNorm CNN with SGD lr 0.02 momentum 0.9, batch 32, validation every 20 steps."""
    x, y = images(768, seed=seed)
    return fit_lightning(
        cnn_bn(),
        lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9),
        torch.utils.data.TensorDataset(x[:512], y[:512]),
        32,
        200,
        seed,
        val_data=torch.utils.data.TensorDataset(x[512:], y[512:]),
        val_every=20,
    )


@scenario(family="lstm", optimizer="Adam")
def healthy_lstm_adam(seed: int) -> RunResult:
    """The LSTM classifier on token-count sequences, Adam lr 3e-3."""
    x, y = sequences(1024, seed=seed)
    model = LSTMClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return train(model, opt, sampler(x, y, 32, seed), 300)


@scenario(family="lstm", optimizer="SGD", holdout=True)
def healthy_lstm_sgd_clipped(seed: int) -> RunResult:
    """The LSTM classifier with SGD lr 0.5, momentum 0.9 and gradient clipping at 0.5."""
    x, y = sequences(1024, seed=seed)
    model = LSTMClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return train(model, opt, sampler(x, y, 32, seed), 300, clip=0.5)


def copy_task(n: int, length: int, vocab: int, seed: int) -> torch.utils.data.TensorDataset:
    """Random token sequences; the model sees the sequence and must emit it (teacher-forced)."""
    gen = torch.Generator().manual_seed(seed + 11)
    tokens = torch.randint(0, vocab, (n, length), generator=gen)
    return torch.utils.data.TensorDataset(tokens, tokens.clone())


def _transformer(vocab: int) -> nn.Module:
    from lightning.pytorch.demos import Transformer

    return Transformer(vocab_size=vocab, ninp=32, nhead=2, nhid=64, nlayers=1, dropout=0.0)


def _lm_loss(m: nn.Module, b: Any) -> torch.Tensor:
    return F.nll_loss(m(b[0], b[1]), b[1].reshape(-1))


@scenario(family="transformer", optimizer="AdamW")
def healthy_transformer_adamw_lightning(seed: int) -> RunResult:
    """Lightning: the demo Transformer (1+1 layers, d=32) on a copy task, AdamW 1e-3, clipping 1.0: loss -> ~0."""
    return fit_lightning(
        _transformer(16),
        _lm_loss,
        lambda p: torch.optim.AdamW(p, lr=1e-3),
        copy_task(512, 12, 16, seed),
        32,
        200,
        seed,
        clip=1.0,
    )


@scenario(family="transformer", optimizer="SGD", holdout=True)
def healthy_transformer_sgd(seed: int) -> RunResult:
    """Plain loop: the demo Transformer on the copy task with SGD lr 0.1 momentum 0.9 (no clipping)."""
    data = copy_task(512, 12, 16, seed)
    model = _transformer(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tokens = data.tensors[0]

    def lm(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(out, target.reshape(-1))

    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x, x)

    return train(Wrapped(model), opt, sampler(tokens, tokens, 32, seed), 200, loss_fn=lm)


@scenario(optimizer="Adam")
def healthy_memorise_tiny_subset(seed: int) -> RunResult:
    """The lecture's sanity check: overfit 20 samples to ~0 loss with Adam (no validation set)."""
    x, y = blobs(20, seed=seed)
    model = mlp(20, 4, hidden=64, depth=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return train(model, opt, sampler(x, y, 20, seed), 300)


@scenario(optimizer="SGD", holdout=True)
def healthy_sigmoid_output_binary(seed: int) -> RunResult:
    """Binary classifier: ReLU hidden layers, a sigmoid only at the output (BCE), SGD lr 0.1 momentum 0.9."""
    x, y4 = blobs(1024, seed=seed)
    y = (y4 % 2).float()
    model = nn.Sequential(*mlp(20, 1, hidden=64, depth=2), nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return train(model, opt, sampler(x, y, 64, seed), 250, loss_fn=lambda p, t: F.binary_cross_entropy(p.squeeze(1), t))
