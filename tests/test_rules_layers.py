"""Layer-level advisors: gradients, activations, parameters, inputs, architecture.

Two kinds of tests:

* table-driven cases on synthetic histories (over the model facts of real, tiny modules): every
  rule has faulty cases that must fire (code, layer, start step) and healthy cases that must not;
* short real training runs under :class:`nndiag.Monitor`: the lecture's faulty networks must be
  named, and healthy default-init MLP / BatchNorm CNN / LSTM / Transformer runs must stay silent
  at every check an :class:`~nndiag.advisor.Advisor` makes along the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pandas as pd
import pytest
import torch
from torch import nn

from nndiag import Monitor
from nndiag.advisor import Advisor
from nndiag.demo.models import LSTMClassifier, blobs, cnn_bn, images, mlp, sequences
from nndiag.diagnosis import Diagnosis
from nndiag.rules import RULES
from nndiag.rules.config import AdvisorConfig
from nndiag.rules.view import RunView

LAYER_CODES = frozenset(
    {
        "exploding_gradients",
        "vanishing_gradients",
        "activation_collapse",
        "saturated_activations",
        "dead_units",
        "sigmoid_hidden_layer",
        "weights_not_updating",
        "poor_init_scale",
        "symmetric_init",
        "input_not_normalized",
        "batchnorm_small_batch",
    }
)

# ---------------------------------------------------------------------------------------------
# Synthetic runs: the facts of a real module, a made-up history
# ---------------------------------------------------------------------------------------------


def facts_of(model: nn.Module, x: torch.Tensor, params: Iterable[nn.Parameter] | None = None) -> dict[str, Any]:
    """The model facts nndiag records for ``model`` (one optimizer step on ``x``, lr 0)."""
    trainable = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    opt = torch.optim.SGD(trainable, lr=0.0)
    with Monitor(model, opt, log_dir=None, diagnose=False) as mon:
        out = model(x)
        loss = (out[0] if isinstance(out, tuple) else out).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss.detach())
    return mon.session.facts


def seq(*modules: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*modules)


@cache
def relu_mlp() -> dict[str, Any]:
    """0 Linear(20,64) 1 ReLU 2 Linear(64,64) 3 ReLU 4 Linear(64,4) (PyTorch default init)."""
    return facts_of(
        seq(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)), torch.randn(8, 20)
    )


@cache
def relu_mlp_batch_1() -> dict[str, Any]:
    return facts_of(
        seq(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)), torch.randn(1, 20)
    )


@cache
def tanh_deep() -> dict[str, Any]:
    """Six Linear(64,64)+Tanh blocks (0..11), then 12 Linear(64,4)."""
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(64, 64), nn.Tanh()]
    return facts_of(seq(*layers, nn.Linear(64, 4)), torch.randn(8, 64))


@cache
def tanh_deep_bn() -> dict[str, Any]:
    """Like :func:`tanh_deep` with a BatchNorm1d before every Tanh (0 Linear 1 BN 2 Tanh, 3 Linear ...)."""
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Tanh()]
    return facts_of(seq(*layers, nn.Linear(64, 4)), torch.randn(8, 64))


@cache
def relu_dropout_pool() -> dict[str, Any]:
    """0 Conv 1 ReLU 2 Dropout 3 MaxPool 4 Flatten 5 Linear: the dropout and pool repeat the ReLU's deadness."""
    model = seq(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 4)
    )
    return facts_of(model, torch.randn(4, 3, 8, 8))


class FunctionalRelu(nn.Module):
    """ReLU applied functionally: only the dropout after it carries the ReLU output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(20, 64), nn.Dropout(0.1), nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


@cache
def functional_relu() -> dict[str, Any]:
    torch.manual_seed(0)
    return facts_of(FunctionalRelu(), torch.randn(8, 20))


@cache
def gelu_mlp() -> dict[str, Any]:
    return facts_of(seq(nn.Linear(20, 64), nn.GELU(), nn.Linear(64, 4)), torch.randn(8, 20))


@cache
def sigmoid_mlp() -> dict[str, Any]:
    """0 Linear 1 Sigmoid 2 Linear 3 Sigmoid 4 Linear 5 Sigmoid(output)."""
    model = seq(nn.Linear(20, 32), nn.Sigmoid(), nn.Linear(32, 32), nn.Sigmoid(), nn.Linear(32, 1), nn.Sigmoid())
    return facts_of(model, torch.randn(8, 20))


@cache
def sigmoid_output_only() -> dict[str, Any]:
    return facts_of(seq(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid()), torch.randn(8, 20))


class SqueezeExcite(nn.Module):
    """A conv net with a squeeze-excitation channel gate (sigmoid on a 1x1 map, multiplied in)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.act = nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()
        self.pool, self.fc1, self.fc2, self.scale = (
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(16, 4, 1),
            nn.Conv2d(4, 16, 1),
            nn.Sigmoid(),
        )
        self.conv2, self.head = nn.Conv2d(16, 8, 3, padding=1), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(x))
        h = h * self.scale(self.fc2(torch.relu(self.fc1(self.pool(h)))))
        return self.head(self.conv2(h).mean((2, 3)))


@cache
def squeeze_excite() -> dict[str, Any]:
    torch.manual_seed(0)
    return facts_of(SqueezeExcite(), torch.randn(4, 3, 8, 8))


class GatedHidden(nn.Module):
    """A gating module whose sigmoid feeds a linear layer of the same width (named as a gate)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.gate_act, self.out = nn.Linear(20, 32), nn.Sigmoid(), nn.Linear(32, 4)
        self.value = nn.Linear(20, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.value(x) * self.gate_act(self.proj(x)))


@cache
def gated_hidden() -> dict[str, Any]:
    torch.manual_seed(0)
    return facts_of(GatedHidden(), torch.randn(8, 20))


@cache
def lstm_facts() -> dict[str, Any]:
    torch.manual_seed(0)
    return facts_of(LSTMClassifier(), torch.randint(0, 16, (4, 12)))


@cache
def bn_cnn(batch: int = 4) -> dict[str, Any]:
    torch.manual_seed(0)
    return facts_of(cnn_bn(), torch.randn(batch, 3, 16, 16))


@cache
def frozen_bn_cnn() -> dict[str, Any]:
    torch.manual_seed(0)
    model = cnn_bn()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(False)
    return facts_of(model, torch.randn(4, 3, 16, 16))


@cache
def frozen_first_layer() -> dict[str, Any]:
    torch.manual_seed(0)
    model = seq(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    model[0].requires_grad_(False)
    return facts_of(model, torch.randn(8, 20))


@cache
def missing_layer() -> dict[str, Any]:
    """:func:`relu_mlp` whose optimizer lacks layer 2's parameters."""
    model = seq(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    return facts_of(model, torch.randn(8, 20), [*model[0].parameters(), *model[4].parameters()])


@cache
def conv_bias_before_bn() -> dict[str, Any]:
    return facts_of(
        seq(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(128, 4)), torch.randn(4, 3, 6, 6)
    )


def initialised(build: Callable[[], nn.Sequential], weight: Callable[[nn.Module, torch.Tensor], Any]) -> nn.Sequential:
    model = build()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                weight(m, m.weight)
    return model


def tanh_stack(width: int = 512, depth: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return seq(*layers, nn.Linear(width, 10))


@cache
def init_facts(kind: str) -> dict[str, Any]:
    """Facts of 4-layer nets (width 512) with a given initialisation."""
    x = torch.randn(8, 512)
    if kind == "tanh_small":
        return facts_of(initialised(tanh_stack, lambda m, w: w.normal_(0, 0.01)), x)
    if kind == "tanh_large":
        return facts_of(initialised(tanh_stack, lambda m, w: w.normal_(0, 1.0)), x)
    if kind == "tanh_xavier":
        return facts_of(initialised(tanh_stack, lambda m, w: nn.init.xavier_normal_(w)), x)
    if kind == "tanh_default":
        return facts_of(tanh_stack(), x)
    if kind == "relu_default":
        return facts_of(seq(*[m for _ in range(4) for m in (nn.Linear(512, 512), nn.ReLU())], nn.Linear(512, 10)), x)
    if kind == "relu_he":
        model = seq(*[m for _ in range(4) for m in (nn.Linear(512, 512), nn.ReLU())], nn.Linear(512, 10))
        return facts_of(initialised(lambda: model, lambda m, w: nn.init.kaiming_normal_(w)), x)
    if kind == "shallow_small":  # one hidden layer: small init is fine for shallow nets
        return facts_of(initialised(lambda: tanh_stack(depth=1), lambda m, w: w.normal_(0, 0.01)), x)
    if kind == "linear_only_small":  # no activation after the layers: the prescription does not apply
        return facts_of(
            initialised(lambda: seq(nn.Linear(512, 512), nn.Linear(512, 512)), lambda m, w: w.normal_(0, 0.001)), x
        )
    if kind == "bn_small":  # BatchNorm after every layer makes the weight scale irrelevant
        layers = [m for _ in range(4) for m in (nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU())]
        return facts_of(initialised(lambda: seq(*layers, nn.Linear(512, 10)), lambda m, w: w.normal_(0, 0.001)), x)
    if kind == "prenorm_002":  # GPT-style: LayerNorm -> Linear(std 0.02) -> GELU -> Linear, with embeddings
        return facts_of(PreNormMLP(), torch.randint(0, 100, (4, 6)))
    if kind == "constant":
        return facts_of(initialised(lambda: tanh_stack(64, 3), lambda m, w: w.fill_(0.05)), torch.randn(8, 64))
    if kind == "zero_last":
        model = tanh_stack(64, 3)
        nn.init.zeros_(model[-1].weight)
        return facts_of(model, torch.randn(8, 64))
    if kind == "zero_hidden_random_next":
        model = tanh_stack(64, 3)
        nn.init.zeros_(model[2].weight)
        return facts_of(model, torch.randn(8, 64))
    raise KeyError(kind)


class PreNormMLP(nn.Module):
    def __init__(self, d: int = 128, n: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(100, d)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) for _ in range(n)
        )
        self.head = nn.Linear(d, 2)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for b in self.blocks:
            h = h + b(h)
        return self.head(h.mean(1))


def history(values: dict[tuple[str, str], Any], steps: Iterable[int] = range(6)) -> pd.DataFrame:
    """Long-format history: ``values[(layer, stat)]`` is a scalar (every step) or one value per step."""
    steps = list(steps)
    rows = []
    for (layer, stat), v in values.items():
        seq_v = list(v) if isinstance(v, (list, tuple)) else [v] * len(steps)
        assert len(seq_v) == len(steps), (layer, stat)
        rows += [(s, layer, stat, float(x)) for s, x in zip(steps, seq_v, strict=True) if x is not None]
    return pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])


def with_facts(facts: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**facts, **changes}


@dataclass
class Case:
    """One synthetic case: ``expect`` is ``(layer, step)`` (and optionally severity) or ``None`` (silent)."""

    id: str
    code: str
    facts: Callable[[], dict[str, Any]]
    values: dict[tuple[str, str], Any]
    expect: tuple[Any, ...] | None
    steps: Iterable[int] = field(default_factory=lambda: range(6))
    cfg: dict[str, Any] = field(default_factory=dict)


LECTURE_TANH_STDS = [0.213, 0.0476, 0.0106, 0.00238, 0.000532, 0.000119]  # the lecture's table, layers 1-6


def tanh_stds(stds: list[float]) -> dict[tuple[str, str], Any]:
    return {(str(2 * i + 1), "act_std"): s for i, s in enumerate(stds)}


def grads(names: list[str], values: list[Any]) -> dict[tuple[str, str], Any]:
    return {(n, "grad_norm"): v for n, v in zip(names, values, strict=True)}


W = ["0.weight", "2.weight", "4.weight"]  # relu_mlp's weight tensors

CASES = [
    # -- exploding gradients ---------------------------------------------------------------------
    Case(
        "grows-then-nan",
        "exploding_gradients",
        relu_mlp,
        {
            **grads(W, [[1, 1, 1, 80, math.nan, math.nan], [1, 1, 1, 1, 1, math.nan], 1.0]),
            ("", "grad_norm_total"): [0.5, 0.6, 0.5, 80, math.nan, math.nan],
        },
        ("0.weight", 4, "error"),
    ),
    Case(
        "backward-overflow-inf",
        "exploding_gradients",
        relu_mlp,
        {**grads(W, [[1, 1, 1, math.inf, math.nan, math.nan], 1.0, 1.0]), ("", "loss"): [2, 2, 2, 1e20, 1e30, 1e30]},
        ("0.weight", 3, "error"),
    ),
    Case(
        "nan-from-corrupt-input",
        "exploding_gradients",
        relu_mlp,
        {**grads(W, [[1, 1, 1, math.nan, math.nan, math.nan], 1.0, 1.0]), ("input", "nonfinite"): [0, 0, 0, 1, 0, 0]},
        None,
    ),
    Case(
        "nan-from-log-zero",
        "exploding_gradients",
        relu_mlp,
        {
            **grads(W, [[1, 1, 1, math.nan, math.nan, math.nan], 1.0, 1.0]),
            ("", "loss"): [0.7, 0.6, 0.5, math.nan, math.nan, math.nan],
        },
        None,
    ),
    Case("nan-gradient-gone", "exploding_gradients", relu_mlp, grads(W, [[1, 1, math.nan, 1, 1, 1], 1.0, 1.0]), None),
    Case(
        "huge-total-norm",
        "exploding_gradients",
        relu_mlp,
        {**grads(W, [1.0, 1.0, 1.0]), ("", "grad_norm_total"): [1, 2, 5e6, 2e7, 5e7, 1e8]},
        (None, 2, "error"),
    ),
    Case(
        "total-norm-grows-1000x",
        "exploding_gradients",
        relu_mlp,
        {**grads(W, [1.0, 1.0, 1.0]), ("", "grad_norm_total"): [0.5, 0.6, 0.5, 80, 200, 600]},
        (None, 3, "warning"),
    ),
    Case(
        "total-norm-grows-5x",
        "exploding_gradients",
        relu_mlp,
        {**grads(W, [1.0, 1.0, 1.0]), ("", "grad_norm_total"): [0.5, 0.6, 0.5, 1, 2, 2.5]},
        None,
    ),
    Case(
        "first-layer-300x-last",
        "exploding_gradients",
        relu_mlp,
        grads(W, [300.0, 10.0, 1.0]),
        ("0.weight", 0, "warning"),
    ),
    Case("first-layer-300x-once", "exploding_gradients", relu_mlp, grads(W, [[1, 1, 1, 1, 300, 1], 1.0, 1.0]), None),
    Case(
        "first-layer-300x-raw-input",
        "exploding_gradients",
        relu_mlp,
        {**grads(W, [300.0, 10.0, 1.0]), ("input", "act_mean"): 120.0, ("input", "act_std"): 60.0},
        None,
    ),
    Case("healthy-gradients", "exploding_gradients", relu_mlp, grads(W, [0.1, 0.2, 0.2]), None),
    # -- vanishing gradients ---------------------------------------------------------------------
    Case("first-1e-5-of-last", "vanishing_gradients", relu_mlp, grads(W, [1e-6, 1e-3, 0.1]), ("0.weight", 0)),
    Case("first-small-not-tiny", "vanishing_gradients", relu_mlp, grads(W, [1e-3, 0.1, 2.0]), None),
    Case(
        "vanishing-recovers",
        "vanishing_gradients",
        relu_mlp,
        grads(W, [[1e-6, 1e-6, 1e-6, 1e-6, 1e-2, 1e-2], 1e-3, 0.1]),
        None,
    ),
    Case(
        "vanished-everywhere",
        "vanishing_gradients",
        relu_mlp,
        {**grads(W, [1e-9, 1e-9, 1e-9]), ("0.weight", "update_ratio"): 1e-9, ("", "loss"): 1.38},
        ("0.weight", 0),
    ),
    Case(
        "tiny-gradients-converged-loss",
        "vanishing_gradients",
        relu_mlp,
        {**grads(W, [1e-9, 1e-9, 1e-9]), ("0.weight", "update_ratio"): 1e-9, ("", "loss"): 1e-5},
        None,
    ),
    Case(
        "tiny-gradients-adam-moves",
        "vanishing_gradients",
        relu_mlp,
        {**grads(W, [1e-9, 1e-9, 1e-9]), ("0.weight", "update_ratio"): 1e-3, ("", "loss"): 1.38},
        None,
    ),
    Case("zero-gradient-not-vanishing", "vanishing_gradients", relu_mlp, grads(W, [0.0, 0.0, 0.1]), None),
    Case("frozen-first-layer", "vanishing_gradients", frozen_first_layer, grads(["2.weight"], [0.1]), None),
    # -- activation collapse ---------------------------------------------------------------------
    Case("lecture-table", "activation_collapse", tanh_deep, tanh_stds(LECTURE_TANH_STDS), ("3", 0)),
    Case(
        "lecture-table-from-step-2",
        "activation_collapse",
        tanh_deep,
        {(str(2 * i + 1), "act_std"): [0.6] * 2 + [s] * 4 for i, s in enumerate(LECTURE_TANH_STDS)},
        ("3", 2),
    ),
    Case("lecture-table-two-checks", "activation_collapse", tanh_deep, tanh_stds(LECTURE_TANH_STDS), None, range(2)),
    Case(
        "default-init-0.41-per-layer",
        "activation_collapse",
        tanh_deep,
        tanh_stds([0.6 * 0.41**i for i in range(6)]),
        None,
    ),
    Case(
        "shrinks-to-a-floor", "activation_collapse", tanh_deep, tanh_stds([0.29, 0.07, 0.03, 0.027, 0.026, 0.026]), None
    ),
    Case(
        "batchnorm-breaks-the-chain",
        "activation_collapse",
        tanh_deep_bn,
        {(str(3 * i + 2), "act_std"): s for i, s in enumerate(LECTURE_TANH_STDS)},
        None,
    ),
    Case(
        "collapse-resolved",
        "activation_collapse",
        tanh_deep,
        {(str(2 * i + 1), "act_std"): [s] * 4 + [0.6] * 2 for i, s in enumerate(LECTURE_TANH_STDS)},
        None,
    ),
    # -- saturation ------------------------------------------------------------------------------
    Case(
        "tanh-saturated", "saturated_activations", tanh_deep, {("3", "sat_frac"): 0.9, ("5", "sat_frac"): 0.7}, ("3", 0)
    ),
    Case(
        "tanh-saturates-later",
        "saturated_activations",
        tanh_deep,
        {("3", "sat_frac"): [0.1, 0.1, 0.2, 0.8, 0.9, 0.95]},
        ("3", 3),
    ),
    Case("tanh-saturated-twice", "saturated_activations", tanh_deep, {("3", "sat_frac"): [0, 0, 0, 0, 0.9, 0.9]}, None),
    Case("tanh-a-third-saturated", "saturated_activations", tanh_deep, {("3", "sat_frac"): 0.3}, None),
    Case("sigmoid-output-saturated", "saturated_activations", sigmoid_mlp, {("5", "sat_frac"): 0.95}, None),
    # -- dead units ------------------------------------------------------------------------------
    Case("relu-82pct-dead", "dead_units", relu_mlp, {("1", "dead_frac"): 0.1, ("3", "dead_frac"): 0.82}, ("3", 0)),
    Case("relu-dies-at-step-2", "dead_units", relu_mlp, {("3", "dead_frac"): [0, 0.1, 0.6, 0.7, 0.8, 0.8]}, ("3", 2)),
    Case("relu-few-pct-dead", "dead_units", relu_mlp, {("1", "dead_frac"): 0.03, ("3", "dead_frac"): 0.08}, None),
    Case(
        "batch-1-half-the-units-off",
        "dead_units",
        relu_mlp_batch_1,
        {("1", "dead_frac"): 0.6, ("3", "dead_frac"): 0.55},
        None,
    ),
    Case("relu-dead-one-batch", "dead_units", relu_mlp, {("3", "dead_frac"): [0.1, 0.1, 0.9, 0.1, 0.1, 0.1]}, None),
    Case("relu-recovered", "dead_units", relu_mlp, {("3", "dead_frac"): [0.9, 0.9, 0.9, 0.9, 0.2, 0.1]}, None),
    Case(
        "relu-then-dropout-and-pool",
        "dead_units",
        relu_dropout_pool,
        {("1", "dead_frac"): 0.8, ("2", "dead_frac"): 0.8, ("3", "dead_frac"): 0.8, ("4", "dead_frac"): 0.8},
        ("1", 0),
    ),
    Case("functional-relu-dropout", "dead_units", functional_relu, {("drop", "dead_frac"): 0.9}, ("drop", 0)),
    Case("gelu-never-dies", "dead_units", gelu_mlp, {("1", "dead_frac"): 0.9}, None),
    # -- sigmoid in hidden layers ----------------------------------------------------------------
    Case("sigmoid-hidden", "sigmoid_hidden_layer", sigmoid_mlp, {("", "loss"): 1.0}, ("1", 0, "info")),
    Case("sigmoid-output-only", "sigmoid_hidden_layer", sigmoid_output_only, {("", "loss"): 1.0}, None),
    Case("squeeze-excitation-gate", "sigmoid_hidden_layer", squeeze_excite, {("", "loss"): 1.0}, None),
    Case("named-gate", "sigmoid_hidden_layer", gated_hidden, {("", "loss"): 1.0}, None),
    Case("lstm-gates", "sigmoid_hidden_layer", lstm_facts, {("", "loss"): 1.0}, None),
    # -- weights not updating --------------------------------------------------------------------
    Case(
        "missing-from-optimizer",
        "weights_not_updating",
        missing_layer,
        {("2.weight", "update_ratio"): 0.0, ("2.bias", "update_ratio"): 0.0, ("0.weight", "update_ratio"): 1e-3},
        ("2.weight", 0, "error"),
    ),
    Case(
        "no-gradient",
        "weights_not_updating",
        relu_mlp,
        {("0.weight", "update_ratio"): 0.0, ("0.weight", "grad_norm"): 0.0, ("2.weight", "update_ratio"): 1e-3},
        ("0.weight", 0, "warning"),
    ),
    Case(
        "lr-zero",
        "weights_not_updating",
        relu_mlp,
        {("0.weight", "update_ratio"): 0.0, ("0.weight", "grad_norm"): 0.3, ("optimizer", "lr"): 0.0},
        ("0.weight", 0, "warning"),
    ),
    Case(
        "updates-only-two-checks",
        "weights_not_updating",
        missing_layer,
        {("2.weight", "update_ratio"): 0.0},
        None,
        range(2),
    ),
    Case(
        "alternating-updates",
        "weights_not_updating",
        relu_mlp,
        {("0.weight", "update_ratio"): [1e-3, 0, 0, 0, 0, 1e-3, 0, 0, 0, 0]},
        None,
        range(10),
    ),
    Case(
        "updating",
        "weights_not_updating",
        relu_mlp,
        {("0.weight", "update_ratio"): 2e-3, ("0.bias", "update_ratio"): 1e-2},
        None,
    ),
    Case(
        "frozen-is-not-trainable",
        "weights_not_updating",
        frozen_first_layer,
        {("2.weight", "update_ratio"): 1e-3},
        None,
    ),
    Case(
        "bias-before-batchnorm",
        "weights_not_updating",
        conv_bias_before_bn,
        {("0.bias", "update_ratio"): 0.0, ("0.bias", "grad_norm"): 1e-12, ("0.weight", "update_ratio"): 1e-3},
        None,
    ),
    Case(
        "blocked-by-dead-relu",
        "weights_not_updating",
        relu_mlp,
        {("0.weight", "update_ratio"): 0.0, ("0.weight", "grad_norm"): 0.0, ("3", "dead_frac"): 1.0},
        None,
    ),
    # -- initial weight scale --------------------------------------------------------------------
    Case("tanh-0.01-randn", "poor_init_scale", lambda: init_facts("tanh_small"), {("", "loss"): 2.3}, ("0.weight", 0)),
    Case("tanh-1.0-randn", "poor_init_scale", lambda: init_facts("tanh_large"), {("", "loss"): 2.3}, ("0.weight", 0)),
    Case("tanh-xavier", "poor_init_scale", lambda: init_facts("tanh_xavier"), {("", "loss"): 2.3}, None),
    Case("tanh-pytorch-default", "poor_init_scale", lambda: init_facts("tanh_default"), {("", "loss"): 2.3}, None),
    Case("relu-pytorch-default", "poor_init_scale", lambda: init_facts("relu_default"), {("", "loss"): 2.3}, None),
    Case("relu-he", "poor_init_scale", lambda: init_facts("relu_he"), {("", "loss"): 2.3}, None),
    Case("shallow-small-init", "poor_init_scale", lambda: init_facts("shallow_small"), {("", "loss"): 2.3}, None),
    Case("no-activation", "poor_init_scale", lambda: init_facts("linear_only_small"), {("", "loss"): 2.3}, None),
    Case("batchnorm-after-layers", "poor_init_scale", lambda: init_facts("bn_small"), {("", "loss"): 2.3}, None),
    Case("gpt-style-0.02-prenorm", "poor_init_scale", lambda: init_facts("prenorm_002"), {("", "loss"): 0.7}, None),
    Case(
        "weights-grew-into-range",
        "poor_init_scale",
        lambda: init_facts("tanh_small"),
        {(f"{i}.weight", "weight_norm"): 512 * 0.045 for i in (0, 2, 4, 6)},
        None,
    ),
    # -- symmetric initialisation ----------------------------------------------------------------
    Case(
        "constant-init", "symmetric_init", lambda: init_facts("constant"), {("", "loss"): 2.3}, ("0.weight", 0, "error")
    ),
    Case("zero-init-last-layer", "symmetric_init", lambda: init_facts("zero_last"), {("", "loss"): 2.3}, None),
    Case(
        "zero-hidden-random-next",
        "symmetric_init",
        lambda: init_facts("zero_hidden_random_next"),
        {("", "loss"): 2.3},
        None,
    ),
    Case("default-init", "symmetric_init", relu_mlp, {("", "loss"): 2.3}, None),
    # -- input normalisation ---------------------------------------------------------------------
    Case(
        "raw-pixels",
        "input_not_normalized",
        relu_mlp,
        {("input", "act_mean"): 118.0, ("input", "act_std"): 64.0},
        ("input", 0),
    ),
    Case(
        "unscaled-features",
        "input_not_normalized",
        relu_mlp,
        {("input", "act_mean"): 0.3, ("input", "act_std"): 850.0},
        ("input", 0),
    ),
    Case(
        "pixels-0-1", "input_not_normalized", relu_mlp, {("input", "act_mean"): 0.45, ("input", "act_std"): 0.28}, None
    ),
    Case(
        "standardised", "input_not_normalized", relu_mlp, {("input", "act_mean"): 0.02, ("input", "act_std"): 1.0}, None
    ),
    Case(
        "one-odd-batch",
        "input_not_normalized",
        relu_mlp,
        {("input", "act_mean"): [0, 0, 0, 5, 0, 0], ("input", "act_std"): 1.0},
        None,
    ),
    # -- BatchNorm with small batches ------------------------------------------------------------
    Case("batchnorm-batch-4", "batchnorm_small_batch", lambda: bn_cnn(4), {("", "loss"): 1.0}, ("1", 0)),
    Case("batchnorm-batch-32", "batchnorm_small_batch", lambda: bn_cnn(32), {("", "loss"): 1.0}, None),
    Case("frozen-batchnorm", "batchnorm_small_batch", frozen_bn_cnn, {("", "loss"): 1.0}, None),
    Case(
        "no-batchnorm", "batchnorm_small_batch", lambda: with_facts(relu_mlp(), batch_size=2), {("", "loss"): 1.0}, None
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_synthetic(case: Case) -> None:
    view = RunView(history(case.values, case.steps), case.facts())
    found = RULES[case.code].fn(view, AdvisorConfig.from_dict(case.cfg))
    assert all(d.code == case.code for d in found), found
    if case.expect is None:
        assert found == [], [d.message for d in found]
        return
    assert len(found) == 1, [d.message for d in found]
    d = found[0]
    layer, step, *severity = case.expect
    assert (d.layer, d.step) == (layer, step), d
    if severity:
        assert d.severity == severity[0]
    _check_style(d)


def _check_style(d: Diagnosis) -> None:
    """One sentence with a number, numeric evidence, concrete suggestions."""
    assert d.message.endswith(".") and d.message.count(". ") == 0, d.message
    assert any(ch.isdigit() for ch in d.message), d.message
    assert d.evidence and all(isinstance(v, float | int) for v in d.evidence.values()), d.evidence
    assert d.suggestions and all(s.endswith(".") for s in d.suggestions), d.suggestions


def test_every_layer_rule_has_faulty_and_healthy_cases() -> None:
    for code in LAYER_CODES:
        cases = [c for c in CASES if c.code == code]
        assert any(c.expect is not None for c in cases), code
        assert any(c.expect is None for c in cases), code


def test_rules_ignore_runs_without_facts_or_stats() -> None:
    view = RunView(history({("", "loss"): 2.3}), {})
    for code in LAYER_CODES:
        assert RULES[code].fn(view, AdvisorConfig()) == [], code


def test_thresholds_come_from_the_config() -> None:
    view = RunView(history({("1", "dead_frac"): 0.1, ("3", "dead_frac"): 0.4}), relu_mlp())
    assert RULES["dead_units"].fn(view, AdvisorConfig()) == []
    assert [d.layer for d in RULES["dead_units"].fn(view, AdvisorConfig.from_dict({"dead_frac": 0.3}))] == ["3"]
    stuck = RunView(history({("2.weight", "update_ratio"): 0.0}), missing_layer())
    assert RULES["weights_not_updating"].fn(stuck, AdvisorConfig.from_dict({"frozen_checks": 10})) == []


# ---------------------------------------------------------------------------------------------
# Real training runs
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    view: RunView
    found: list[Diagnosis]  # every diagnosis the Advisor raised along the run (checks at each logging step)

    def codes(self, severities: tuple[str, ...] = ("warning", "error", "info")) -> set[str]:
        return {d.code for d in self.found if d.severity in severities}

    def get(self, code: str) -> Diagnosis:
        matches = [d for d in self.found if d.code == code]
        assert matches, f"{code} not raised; raised: {[(d.code, d.message) for d in self.found]}"
        return matches[0]


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 30,
    batch: int = 32,
    opt: torch.optim.Optimizer | None = None,
    lr: float = 0.05,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    check_every: int = 1,
) -> Run:
    """Train under Monitor; run an Advisor over the growing history every ``check_every`` logging steps."""
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    with Monitor(model, opt, log_dir=None, diagnose=False) as mon:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=gen)
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss.detach())
    h, facts = mon.history, mon.session.facts
    advisor = Advisor()
    logged = sorted(h[h.stat == "act_std"].step.unique())
    for s in logged[check_every - 1 :: check_every]:
        advisor.check(RunView(h[h.step <= s], facts))
    view = RunView(h, facts)
    advisor.check(view)
    return Run(view, advisor.diagnoses)


def deep_net(
    act: type[nn.Module], scale: float, depth: int = 8, width: int = 256, features: int = 256
) -> nn.Sequential:
    """The lecture's experiment: ``depth`` Linear+act layers, no bias, W = scale*randn, then a classifier."""
    layers: list[nn.Module] = []
    fan_in = features
    for _ in range(depth):
        lin = nn.Linear(fan_in, width, bias=False)
        nn.init.normal_(lin.weight, 0.0, scale)
        layers += [lin, act()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(width, 10))


@pytest.fixture(scope="module")
def gaussian_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(512, 256, generator=gen), torch.randint(0, 10, (512,), generator=gen)


def test_lecture_tanh_net_small_init_collapses(gaussian_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    r = run(deep_net(nn.Tanh, 0.01), *gaussian_data, steps=25, batch=64)
    collapse = r.get("activation_collapse")
    assert collapse.step == 0 and collapse.evidence["ratio_per_layer"] < 0.25
    assert collapse.layer in {"3", "5"}
    assert r.get("vanishing_gradients").layer == "0.weight"
    assert r.get("poor_init_scale").layer == "0.weight"
    assert r.codes(("warning", "error")) <= {
        "activation_collapse",
        "vanishing_gradients",
        "poor_init_scale",
        "lr_too_low",
        "loss_not_decreasing",
        "underfitting",
    }


def test_tanh_net_unit_init_saturates(gaussian_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    r = run(deep_net(nn.Tanh, 1.0, depth=4), *gaussian_data, steps=25, batch=64)
    sat = r.get("saturated_activations")
    assert (sat.layer, sat.step) == ("1", 0) and sat.evidence["sat_frac"] > 0.8
    assert "Xavier" in sat.suggestions[0]
    assert r.get("poor_init_scale").evidence["factor"] > 10


def test_relu_negative_bias_kills_units() -> None:
    x, y = blobs(512)
    torch.manual_seed(0)
    model = mlp(20, 4)
    with torch.no_grad():
        model[2].bias.fill_(-5.0)
    r = run(model, x, y, steps=25)
    dead = r.get("dead_units")
    assert (dead.layer, dead.step, dead.severity) == ("3", 0, "warning")
    assert dead.evidence["dead_frac"] == 1.0 and dead.evidence["bias_init_mean"] == -5.0
    assert "2.bias" in dead.suggestions[0]
    # the dead layer blocks the gradient of layers 0 and 2: named once, as dead units
    assert r.codes(("warning", "error")) == {"dead_units"}


def test_sigmoid_hidden_layers() -> None:
    x, y = blobs(512)
    torch.manual_seed(0)
    r = run(mlp(20, 4, depth=3, act=nn.Sigmoid), x, y, steps=25)
    info = r.get("sigmoid_hidden_layer")
    assert (info.layer, info.severity, info.evidence["hidden_sigmoid_layers"]) == ("1", "info", 3.0)


def test_parameters_missing_from_the_optimizer() -> None:
    x, y = blobs(512)
    torch.manual_seed(0)
    model = mlp(20, 4)
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("2.")], lr=1e-3)
    r = run(model, x, y, steps=25, opt=opt)
    d = r.get("weights_not_updating")
    assert (d.layer, d.step, d.severity) == ("2.weight", 0, "error")
    assert "not in any optimizer" in d.message and d.evidence["params"] == 2.0
    assert r.codes(("warning", "error")) == {"weights_not_updating"}


def test_constant_init_is_symmetric() -> None:
    x, y = blobs(512)
    torch.manual_seed(0)
    model = mlp(20, 4)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.weight, 0.05)
            nn.init.zeros_(m.bias)
    r = run(model, x, y, steps=20)
    d = r.get("symmetric_init")
    assert (d.layer, d.step, d.severity) == ("0.weight", 0, "error")


def test_raw_pixels_are_not_normalized() -> None:
    x, y = images(256)
    x = ((x - x.min()) / (x.max() - x.min()) * 255).round()
    torch.manual_seed(0)
    r = run(cnn_bn(), x, y, steps=20, lr=0.01)
    d = r.get("input_not_normalized")
    assert (d.layer, d.step) == ("input", 0) and d.evidence["input_mean"] > 50
    assert "255" in d.message and "255" in d.suggestions[0]
    assert r.codes(("warning", "error")) == {"input_not_normalized"}


def test_batchnorm_with_batch_4() -> None:
    x, y = images(256)
    torch.manual_seed(0)
    r = run(cnn_bn(), x, y, steps=20, batch=4, lr=0.01)
    d = r.get("batchnorm_small_batch")
    assert (d.layer, d.evidence["batch_size"]) == ("1", 4.0) and "GroupNorm" in d.suggestions[0]


class TinyTransformer(nn.Module):
    """Pre-LN Transformer encoder with GPT-style std-0.02 init, dropout, a frozen embedding."""

    def __init__(self, vocab: int = 16, d: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 2)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        self.embed.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def _healthy(name: str) -> Run:
    torch.manual_seed(0)
    if name == "mlp-sgd":
        x, y = blobs(1024)
        return run(mlp(20, 4), x, y, steps=80, batch=64, check_every=2)
    if name == "mlp-dropout-adam-batch-4":
        x, y = blobs(1024)
        model = nn.Sequential(
            nn.Linear(20, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, 4),
        )
        return run(model, x, y, steps=60, batch=4, opt=torch.optim.Adam(model.parameters(), 1e-3), check_every=2)
    if name == "cnn-bn-adam":
        x, y = images(512)
        model = cnn_bn()
        return run(model, x, y, steps=60, opt=torch.optim.Adam(model.parameters(), 1e-3), check_every=3)
    if name == "lstm-adam":
        x, y = sequences(512)
        model = LSTMClassifier()
        return run(model, x, y, steps=60, opt=torch.optim.Adam(model.parameters(), 3e-3), check_every=3)
    if name == "transformer-adamw-frozen-embedding":
        x, y = sequences(512)
        model = TinyTransformer()
        params = [p for p in model.parameters() if p.requires_grad]
        return run(model, x, y, steps=50, opt=torch.optim.AdamW(params, 1e-3), check_every=3)
    raise KeyError(name)


@pytest.mark.parametrize(
    "name", ["mlp-sgd", "mlp-dropout-adam-batch-4", "cnn-bn-adam", "lstm-adam", "transformer-adamw-frozen-embedding"]
)
def test_healthy_runs_stay_silent(name: str) -> None:
    r = _healthy(name)
    loud = [(d.code, d.layer, d.step, d.message) for d in r.found if d.severity != "info"]
    assert loud == []
    assert not (r.codes() & LAYER_CODES)
