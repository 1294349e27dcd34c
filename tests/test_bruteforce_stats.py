"""Every statistic nndiag records, checked against an independent brute-force recomputation.

For each model, the same initial weights (a deep copy), the same batches and the same RNG
seed are trained twice: once in a plain loop with this file's own forward hooks and
before/after parameter copies (the reference, computed in float64 with straightforward
torch code), and once under nndiag (``Monitor`` or ``DiagnosticsCallback``). Every
``(step, layer, stat)`` nndiag recorded is compared with the reference, and the set of
recorded keys must be exactly the set the contract implies.

Architectures: MLPs (ReLU with negative-bias init, Tanh with large weights, mixed
activation families), a CNN with BatchNorm, a Conv1d net (3-D channels-first outputs),
LSTMs, and Lightning's demo Transformer.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from helpers import fit, loader, make_module
from torch import nn
from torch.nn import functional as F

from nndiag import DiagnosticsCallback, Monitor
from nndiag.demo.models import LSTMClassifier, blobs, cnn_bn, images, mlp, sequences

Key = tuple[int, str, str]  # (step, layer, stat)

# --------------------------------------------------------------------------------------
# The contract, restated independently of nndiag's code
# --------------------------------------------------------------------------------------

RELU_FAMILY = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
)
OTHER_ACTIVATIONS = (
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softsign,
    nn.Softplus,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Tanhshrink,
    nn.LogSigmoid,
)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
ELEMENTWISE = RELU_FAMILY + OTHER_ACTIVATIONS + DROPOUTS
CHANNELS_FIRST = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def saturated(module: nn.Module, y: torch.Tensor) -> int | None:
    """Saturated element count of ``y`` for saturating activations, else None."""
    if isinstance(module, (nn.Tanh, nn.Softsign)):
        return int((y.abs() >= 0.99).sum())
    if isinstance(module, nn.Sigmoid):
        return int(((y <= 0.01) | (y >= 0.99)).sum())
    if isinstance(module, nn.ReLU6):  # a Hardtanh subclass: only the top clip counts
        return int((y >= 6).sum())
    if isinstance(module, nn.Hardtanh):
        return int(((y <= module.min_val) | (y >= module.max_val)).sum())
    return None


def floats_in(obj: Any) -> list[torch.Tensor]:
    """The floating tensors of a (nested) module output, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in floats_in(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in floats_in(v)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in floats_in(getattr(obj, f.name))]
    return []


def hooked_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules plus nn.MultiheadAttention as one unit (its children skipped)."""
    attention = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    out = []
    for name, m in model.named_modules():
        if any(name.startswith(a + ".") for a in attention):
            continue
        if isinstance(m, nn.MultiheadAttention) or len(list(m.children())) == 0:
            out.append((name, m))
    return out


@dataclass
class Call:
    tensors: list[torch.Tensor]  # float64 copies of the floating outputs
    unit_dim: int


class Reference:
    """Own forward hooks and plain-torch statistics (float64) for one model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = dict(hooked_modules(model))
        self.calls: dict[str, list[Call]] = {}
        self.order: list[str] = []  # first-call order of modules with floating outputs
        self.out_shapes: dict[str, list[int]] = {}
        self.input: torch.Tensor | None = None
        self.input_seen = False
        self.batch_size: int | None = None
        self.prev: tuple[torch.Size, bool] | None = None  # previous call's (shape, channels_first)
        self.armed = False
        self.handles = [model.register_forward_pre_hook(self._root_hook, with_kwargs=True)]
        for name, m in self.modules.items():
            self.handles.append(m.register_forward_hook(self._hook(name)))

    def arm(self) -> None:
        self.armed = True
        self.calls = {}
        self.last_output: torch.Tensor | None = None
        self.input = None
        self.input_seen = False
        self.prev = None

    def disarm(self) -> None:
        self.armed = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _set_input(self, args: Any) -> None:
        self.input_seen = True
        tensors = floats_in(args)
        self.input = tensors[0].detach().double().clone() if tensors else None
        if self.batch_size is None:
            every = [a for a in (args if isinstance(args, (tuple, list)) else [args]) if isinstance(a, torch.Tensor)]
            self.batch_size = int(every[0].shape[0]) if every else None

    def _root_hook(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self.armed and module.training and not self.input_seen:
            self._set_input((args, kwargs) if kwargs else args)

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.armed or not self.model.training:
                return
            if not self.input_seen:  # the root forward was not called
                self._set_input(args)
            tensors = floats_in(output)
            if not tensors:
                return
            first = tensors[0]
            self.last_output = first.detach().double().clone()  # the last module's output: the model's
            if first.dim() == 3:
                if isinstance(module, CHANNELS_FIRST):
                    cf = True
                elif isinstance(module, ELEMENTWISE) and self.prev is not None and self.prev[0] == first.shape:
                    cf = self.prev[1]
                else:
                    cf = False
            else:
                cf = first.dim() >= 4
            self.prev = (first.shape, cf)
            if name not in self.out_shapes:
                self.order.append(name)
                self.out_shapes[name] = list(first.shape)
            copies = [t.detach().double().clone() for t in tensors]
            self.calls.setdefault(name, []).append(Call(copies, 1 if cf else first.dim() - 1))

        return hook

    def activation_stats(self, step: int) -> dict[Key, float]:
        out: dict[Key, float] = {}
        if self.input is not None:
            x = self.input.reshape(-1)
            out[(step, "input", "act_mean")] = x.mean().item()
            out[(step, "input", "act_std")] = x.std(correction=0).item()
            out[(step, "input", "nonfinite")] = float((~torch.isfinite(x)).sum())
        for name, calls in self.calls.items():
            module = self.modules[name]
            flat = torch.cat([t.reshape(-1) for c in calls for t in c.tensors])
            out[(step, name, "act_mean")] = flat.mean().item()
            out[(step, name, "act_std")] = flat.std(correction=0).item()
            out[(step, name, "nonfinite")] = float((~torch.isfinite(flat)).sum())
            if all(len(c.tensors) == 1 for c in calls) and flat.numel() > 0:
                minimum = torch.stack([c.tensors[0].min() for c in calls]).min()
                if isinstance(module, RELU_FAMILY) or bool(minimum >= 0):
                    units = calls[0].tensors[0].shape[calls[0].unit_dim]
                    dead = 0
                    for u in range(units):
                        peak = torch.stack([c.tensors[0].select(c.unit_dim, u).max() for c in calls]).max()
                        dead += int(bool(peak <= 0))  # a NaN peak is not dead
                    out[(step, name, "dead_frac")] = dead / units
            sat = saturated(module, flat)
            if sat is not None:
                out[(step, name, "sat_frac")] = sat / flat.numel()
        y = getattr(self, "last_output", None)
        if y is not None and y.dim() > 0:
            y = torch.where(torch.isfinite(y), y, torch.zeros((), dtype=y.dtype))
            rows = y.reshape(y.shape[0], -1)
            out[(step, "", "output_mean")] = y.mean().item()
            out[(step, "", "output_std")] = y.std(correction=0).item()
            out[(step, "", "output_min")] = y.min().item()
            out[(step, "", "output_max")] = y.max().item()
            spread = rows.std(0, correction=0).mean().item() if rows.shape[0] > 1 else math.nan
            out[(step, "", "output_spread")] = spread
        return out


def lr_layers(optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
    many = len(optimizers) > 1 or any(len(o.param_groups) > 1 for o in optimizers)
    return {
        (f"optimizer{k}.group{j}" if many else "optimizer"): float(g["lr"])
        for k, o in enumerate(optimizers)
        for j, g in enumerate(o.param_groups)
    }


def eval_pass(model: nn.Module, loss_of: Callable[[nn.Module, Any], torch.Tensor], batch: Any) -> None:
    """A validation-style forward between training batches (must not be recorded)."""
    model.eval()
    with torch.no_grad():
        loss_of(model, batch)
    model.train()


def reference_run(
    model: nn.Module,
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    batches: list[Any],
    loss_of: Callable[[nn.Module, Any], torch.Tensor],
    seed: int,
    clip: float | None = None,
    accumulate: int = 1,
    eval_batch: Any = None,
    grads_before_clip: bool = False,
) -> tuple[dict[Key, float], Reference]:
    """Train ``model`` in a plain loop; brute-force every statistic at every step.

    Each optimizer step takes ``accumulate`` batches; only the first training forward of a step
    is observed; ``eval_batch`` adds an eval-mode forward before every batch. Gradient norms are
    read after clipping (at ``optimizer.step()``), or before it with ``grads_before_clip`` (Lightning).
    """
    opt = make_opt(model)
    ref = Reference(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    expected: dict[Key, float] = {}
    torch.manual_seed(seed)
    ema: tuple[float, float] | None = None  # the gradient noise scale's EMAs (docs/noise_scale.md)
    for step in range(len(batches) // accumulate):
        losses = []
        micro_sq = 0.0  # sum over micro-batches of their own gradients' squared norms
        for j in range(accumulate):
            if eval_batch is not None:
                eval_pass(model, loss_of, eval_batch)
            if j == 0:
                ref.arm()
            loss = loss_of(model, batches[step * accumulate + j])
            ref.disarm()
            old = [p.grad.detach().double().clone() if p.grad is not None else None for _, p in params]
            loss.backward()
            for (_, p), o in zip(params, old, strict=True):
                if p.grad is not None:
                    micro_sq += float(((p.grad.double() - o) if o is not None else p.grad.double()).square().sum())
            losses.append(loss.item())
        if clip is not None and not grads_before_clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        grads = {n: (0.0 if p.grad is None else p.grad.double().pow(2).sum().sqrt().item()) for n, p in params}
        if clip is not None and grads_before_clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        before = {n: p.detach().double().clone() for n, p in params}
        opt.step()
        opt.zero_grad()
        expected.update(ref.activation_stats(step))
        for n, p in params:
            w0 = before[n]
            norm0 = math.sqrt(sum(v * v for v in w0.reshape(-1).tolist()))  # elementwise, no torch.norm
            delta = math.sqrt(sum(v * v for v in (p.detach().double() - w0).reshape(-1).tolist()))
            expected[(step, n, "grad_norm")] = grads[n]
            expected[(step, n, "weight_norm")] = norm0
            expected[(step, n, "update_ratio")] = delta / norm0 if norm0 > 0 else math.nan
        expected[(step, "", "loss")] = sum(losses) / len(losses)
        expected[(step, "", "grad_norm_total")] = math.sqrt(sum(g * g for g in grads.values()))
        b = float(batches[step * accumulate][0].shape[0])
        expected[(step, "", "batch_size")] = accumulate * b
        if accumulate > 1:  # two batch sizes: the micro-batch and the step (the loss is taken as divided by k)
            small, big = accumulate * micro_sq, sum(g * g for g in grads.values())
            g2 = (accumulate * b * big - b * small) / (accumulate * b - b)
            trace = (small - big) / (1 / b - 1 / (accumulate * b))
            ema = (trace, g2) if ema is None else (ema[0] * 19 / 21 + trace * 2 / 21, ema[1] * 19 / 21 + g2 * 2 / 21)
            expected.update({(step, "", "gns_small_sq"): small, (step, "", "gns_big_sq"): big})
            expected.update({(step, "", "gns_grad_sq"): g2, (step, "", "gns_trace"): trace})
            expected[(step, "", "gns_small_batch")] = b
            if ema[0] > 0 and ema[1] > 0:
                expected[(step, "", "grad_noise_scale")] = ema[0] / ema[1]
        for layer, lr in lr_layers([opt]).items():
            expected[(step, layer, "lr")] = lr
    ref.remove()
    return expected, ref


def monitor_run(
    model: nn.Module,
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    batches: list[Any],
    loss_of: Callable[[nn.Module, Any], torch.Tensor],
    seed: int,
    clip: float | None = None,
    accumulate: int = 1,
    eval_batch: Any = None,
    schedule: int = 1,
) -> tuple[dict[Key, float], dict[str, Any]]:
    """Train ``model`` in the same plain loop under nndiag's Monitor; its records by key."""
    opt = make_opt(model)
    torch.manual_seed(seed)
    with Monitor(model, opt, log_dir=None, schedule=schedule) as mon:
        for i, batch in enumerate(batches):
            if eval_batch is not None:
                eval_pass(model, loss_of, eval_batch)
            loss = loss_of(model, batch)
            loss.backward()
            if (i + 1) % accumulate == 0:
                if clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                opt.zero_grad()
            mon.step(loss)
    return records(mon.history), mon.session.facts


def records(history: Any) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for step, layer, st, value in history[["step", "layer", "stat", "value"]].itertuples(index=False):
        key = (int(step), str(layer), str(st))
        assert key not in out, f"duplicate record {key}"
        out[key] = float(value)
    return out


# --------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------

EXACT = ("nonfinite", "dead_frac", "sat_frac", "lr", "batch_size", "gns_small_batch")
NORMS = ("grad_norm", "weight_norm", "update_ratio", "grad_norm_total")


def tolerance(key: Key, expected: dict[Key, float]) -> float:
    """Allowed |recorded - reference| for one key (nndiag reduces in float32, the reference in float64)."""
    step, layer, st = key
    value = expected[key]
    if st in EXACT:
        return 1e-12
    if st == "update_ratio":  # SGD with momentum is read from its buffer: the optimizer's update, not the realised
        # change of the float32 weights, which differs by each new weight's rounding (at most half an ulp:
        # ||err|| <= 2**-24 ||w||, so 2**-24 in ratio units)
        return 1e-5 * abs(value) + 2**-24
    if st in NORMS:
        return 1e-5 * abs(value) + 1e-12
    if st == "loss":
        return 1e-6 * abs(value) + 1e-7
    if st == "grad_noise_scale":
        return 1e-3 * abs(value)
    if st.startswith("gns_"):  # float32 norms; the estimates are differences of them
        small, big = expected[(step, layer, "gns_small_sq")], expected[(step, layer, "gns_big_sq")]
        return 1e-4 * abs(value) + 1e-5 * (small + big) * expected[(step, layer, "batch_size")] + 1e-12
    if st.startswith("output_"):  # float32 two-pass reductions of the model output
        scale = math.hypot(expected[(step, layer, "output_mean")], expected[(step, layer, "output_std")])
        return 1e-5 * scale + 1e-6 * abs(value) + 1e-12
    mean = expected[(step, layer, "act_mean")]
    std = expected[(step, layer, "act_std")]
    rms = math.hypot(mean, std)
    if st == "act_mean":
        return 1e-5 * rms + 1e-12
    # act_std: 1e-4 relative, plus float32 cancellation in E[x^2] - E[x]^2 (~1e-6 * E[x^2] error in
    # the variance, which moves the std by at most min(err / std, sqrt(err)))
    var_err = 1e-6 * rms * rms
    return 1e-4 * std + min(var_err / std if std > 0 else math.inf, math.sqrt(var_err)) + 1e-12


def mismatches(got: dict[Key, float], expected: dict[Key, float]) -> list[str]:
    """Human-readable differences between nndiag's records and the reference (empty: all agree)."""
    problems = []
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing:
        problems.append(f"{len(missing)} expected records missing, e.g. {missing[:8]}")
    if extra:
        problems.append(f"{len(extra)} unexpected records, e.g. {extra[:8]}")
    for key in sorted(set(got) & set(expected)):
        g, e = got[key], expected[key]
        if math.isnan(e) or math.isnan(g):
            if not (math.isnan(e) and math.isnan(g)):
                problems.append(f"{key}: nndiag {g!r}, reference {e!r}")
            continue
        if math.isinf(e) or math.isinf(g):
            if g != e:
                problems.append(f"{key}: nndiag {g!r}, reference {e!r}")
            continue
        tol = tolerance(key, expected)
        if abs(g - e) > tol:
            problems.append(f"{key}: nndiag {g!r}, reference {e!r} (|diff| {abs(g - e):.3g} > tol {tol:.3g})")
    return problems


def assert_matches(got: dict[Key, float], expected: dict[Key, float]) -> None:
    problems = mismatches(got, expected)
    assert not problems, "nndiag disagrees with the brute force:\n" + "\n".join(problems[:40])


def pairs(records_: dict[Key, float], stat_name: str, step: int = 0) -> set[str]:
    """Layers having ``stat_name`` at ``step``."""
    return {layer for (s, layer, st) in records_ if s == step and st == stat_name}


# --------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------


class Wrapper(nn.Module):
    """Names modules ``net.*``, like the LightningModule of ``helpers.make_module``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def relu_mlp_negative_bias() -> nn.Module:
    torch.manual_seed(1)
    net = mlp(20, 4, hidden=32, depth=3, act=nn.ReLU)
    with torch.no_grad():
        for i in (0, 2, 4):
            net[i].bias.copy_(torch.linspace(-1.5, 0.5, 32))  # mostly negative biases
    return net


def tanh_mlp_large_weights() -> nn.Module:
    torch.manual_seed(2)
    net = mlp(20, 4, hidden=32, depth=3, act=nn.Tanh)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(8.0)
    return net


def mixed_activation_mlp() -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Linear(20, 24),
        nn.BatchNorm1d(24),
        nn.Sigmoid(),
        nn.Linear(24, 24),
        nn.Hardtanh(-0.5, 0.5),
        nn.Linear(24, 24),
        nn.ReLU6(),
        nn.Linear(24, 24),
        nn.Softsign(),
        nn.Linear(24, 24),
        nn.LeakyReLU(0.1),
        nn.Dropout(0.25),
        nn.Linear(24, 24),
        nn.GELU(),
        nn.Linear(24, 24),
        nn.ELU(),
        nn.Linear(24, 4),
    )
    with torch.no_grad():
        net[1].weight.fill_(5.0)  # BatchNorm scale: Sigmoid inputs spread over +-10
        net[3].weight.mul_(4.0)
        net[5].weight.mul_(40.0)  # ReLU6 inputs well beyond 6
        net[7].weight.mul_(300.0)  # Softsign saturates only at |x| >= 99
        net[9].bias.fill_(-1.0)
    return net


class Conv1dNet(nn.Module):
    """3-D outputs: channels-first after Conv1d/BatchNorm1d/MaxPool1d, features-last after a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3)  # (B, 8, 14)
        self.act = nn.ReLU()  # follows the conv: channels are the units
        self.pool = nn.MaxPool1d(2)  # (B, 8, 7), non-negative
        self.drop = nn.Dropout(0.2)  # follows the pool: channels
        self.norm = nn.BatchNorm1d(8)
        self.proj = nn.Linear(7, 5)  # (B, 8, 5): features last
        self.act2 = nn.ReLU()  # follows a Linear: features last
        self.flat = nn.Flatten()
        self.head = nn.Linear(40, 3)
        with torch.no_grad():
            self.conv.bias[:3].fill_(-5.0)  # dead channels
            self.proj.bias[:2].fill_(-4.0)  # dead features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.pool(self.act(self.conv(x))))
        return self.head(self.flat(self.act2(self.proj(self.norm(h)))))


def conv1d_net() -> nn.Module:
    torch.manual_seed(4)
    return Conv1dNet()


def cnn() -> nn.Module:
    torch.manual_seed(5)
    net = cnn_bn(classes=4, channels=8)
    with torch.no_grad():
        net[1].bias[:2].fill_(-6.0)  # BatchNorm shift: two dead channels after the ReLU
        net[5].bias[:5].fill_(-6.0)
    return net


class SharedReluLSTM(nn.Module):
    """An LSTM (tuple output) whose ReLU module is called twice per forward."""

    def __init__(self, vocab: int = 16, hidden: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.relu = nn.ReLU()
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, _) = self.lstm(self.embed(x))
        return self.head(torch.cat([self.relu(out).mean(1), self.relu(h[-1])], dim=1))


def lstm_demo() -> nn.Module:
    torch.manual_seed(6)
    return LSTMClassifier(vocab=16, classes=2, hidden=16)


def lstm_shared() -> nn.Module:
    torch.manual_seed(7)
    net = SharedReluLSTM()
    with torch.no_grad():
        net.lstm.bias_ih_l0[24:27].fill_(-10.0)  # cell input gate g ~ -1: three units always negative
    return net


def transformer() -> nn.Module:
    from lightning.pytorch.demos import Transformer

    torch.manual_seed(8)
    net = Transformer(vocab_size=50, ninp=32, nhead=2, nhid=64, nlayers=2, dropout=0.1)
    with torch.no_grad():
        net.transformer.encoder.layers[0].linear1.bias[:16].fill_(-10.0)  # 16 of 64 feed-forward units dead
    return net


def blob_batches(steps: int, batch: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = blobs(n=steps * batch, features=20, classes=4, seed=11)
    return list(zip(x.split(batch), y.split(batch), strict=True))


def image_batches(steps: int, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = images(n=steps * batch, classes=4, size=8, seed=12)
    return list(zip(x.split(batch), y.split(batch), strict=True))


def signal_batches(steps: int, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(steps * batch, 4, 16, generator=gen)
    y = torch.randint(0, 3, (steps * batch,), generator=gen)
    return list(zip(x.split(batch), y.split(batch), strict=True))


def token_batches(steps: int, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = sequences(n=steps * batch, length=10, vocab=16, seed=14)
    return list(zip(x.split(batch), y.split(batch), strict=True))


def lm_batches(steps: int, batch: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(15)
    tokens = torch.randint(0, 50, (steps * batch, 9), generator=gen)
    return list(zip(tokens[:, :-1].split(batch), tokens[:, 1:].split(batch), strict=True))


def classify(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def language_model(model: nn.Module, batch: Any) -> torch.Tensor:
    inputs, target = batch
    return F.nll_loss(model(inputs, target), target.reshape(-1))


def sgd(lr: float = 0.05, momentum: float = 0.0) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum)


def adam(lr: float = 1e-3) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: torch.optim.Adam(m.parameters(), lr=lr)


@dataclass
class Case:
    build: Callable[[], nn.Module]
    batches: Callable[[int], list[Any]]
    loss_of: Callable[[nn.Module, Any], torch.Tensor] = classify
    make_opt: Callable[[nn.Module], torch.optim.Optimizer] = dataclasses.field(default_factory=sgd)
    steps: int = 3
    # hand-written expectations at step 0 (on top of the rule-derived key set)
    dead: tuple[str, ...] = ()  # layers that must have dead_frac
    not_dead: tuple[str, ...] = ()  # layers that must not
    sat: tuple[str, ...] = ()  # exactly these layers have sat_frac
    has_input: bool = True
    # (layer, stat) -> (low, high) at step 0: the case exercises the statistic away from 0 and 1
    ranges: dict[tuple[str, str], tuple[float, float]] = dataclasses.field(default_factory=dict)


CASES = [
    pytest.param(
        Case(
            relu_mlp_negative_bias,
            blob_batches,
            make_opt=sgd(0.1, momentum=0.9),
            dead=("1", "3", "5"),
            not_dead=("0", "2", "4", "6"),
            ranges={(layer, "dead_frac"): (0.1, 0.9) for layer in ("1", "3", "5")},
        ),
        id="mlp-relu-negative-bias",
    ),
    pytest.param(
        Case(
            tanh_mlp_large_weights,
            blob_batches,
            make_opt=adam(1e-2),
            not_dead=("1", "3", "5"),
            sat=("1", "3", "5"),
            ranges={(layer, "sat_frac"): (0.3, 0.9) for layer in ("1", "3", "5")},
        ),
        id="mlp-tanh-large-weights",
    ),
    pytest.param(
        Case(
            mixed_activation_mlp,
            blob_batches,
            make_opt=adam(1e-2),
            dead=("2", "6", "10", "13", "15"),
            not_dead=("0", "1", "3", "4", "8", "16"),
            sat=("2", "4", "6", "8"),
            ranges={
                **{(layer, "sat_frac"): (0.2, 0.95) for layer in ("2", "4", "6", "8")},
                ("10", "dead_frac"): (0.3, 0.9),
                ("13", "dead_frac"): (0.1, 0.9),
            },
        ),
        id="mlp-mixed-activations",
    ),
    pytest.param(
        Case(
            cnn,
            image_batches,
            make_opt=adam(1e-2),
            dead=("2", "3", "6", "7", "8"),
            not_dead=("0", "1", "4", "5"),
            ranges={
                ("2", "dead_frac"): (2 / 8, 2 / 8),
                ("3", "dead_frac"): (2 / 8, 2 / 8),
                ("8", "dead_frac"): (5 / 16, 5 / 16),
            },
        ),
        id="cnn-batchnorm",
    ),
    pytest.param(
        Case(
            conv1d_net,
            signal_batches,
            make_opt=sgd(0.05),
            dead=("act", "pool", "drop", "act2"),
            not_dead=("conv", "norm", "proj", "head"),
            ranges={
                ("act", "dead_frac"): (3 / 8, 3 / 8),
                ("drop", "dead_frac"): (3 / 8, 3 / 8),
                ("act2", "dead_frac"): (0.4, 0.9),
            },
        ),
        id="conv1d-channels-first",
    ),
    pytest.param(
        Case(lstm_demo, token_batches, make_opt=adam(1e-2), not_dead=("embed", "lstm", "head"), has_input=False),
        id="lstm-demo",
    ),
    pytest.param(
        Case(
            lstm_shared,
            token_batches,
            make_opt=sgd(0.5),
            dead=("relu",),
            not_dead=("lstm",),
            has_input=False,
            ranges={("relu", "dead_frac"): (3 / 12, 3 / 12)},
        ),
        id="lstm-shared-relu",
    ),
    pytest.param(
        Case(
            transformer,
            lm_batches,
            loss_of=language_model,
            make_opt=adam(1e-3),
            dead=("transformer.encoder.layers.0.dropout", "transformer.decoder.layers.1.dropout"),
            not_dead=(
                "embedding",
                "pos_encoder.dropout",
                "transformer.encoder.layers.0.self_attn",
                "transformer.decoder.layers.0.multihead_attn",
                "transformer.encoder.layers.0.linear1",
                "transformer.decoder.norm",
                "decoder",
            ),
            has_input=False,
            ranges={("transformer.encoder.layers.0.dropout", "dead_frac"): (16 / 64, 16 / 64)},
        ),
        id="transformer",
    ),
]


def run_both(case: Case, seed: int = 0) -> tuple[dict[Key, float], dict[Key, float], Reference, dict[str, Any]]:
    model = case.build()
    batches = case.batches(case.steps)
    ref_model = copy.deepcopy(model)
    expected, ref = reference_run(ref_model, case.make_opt, batches, case.loss_of, seed)
    got, facts = monitor_run(model, case.make_opt, batches, case.loss_of, seed)
    return got, expected, ref, facts


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_monitor_matches_brute_force(case: Case):
    got, expected, ref, facts = run_both(case)
    assert_matches(got, expected)
    # hand-written structure, independent of the reference's rules
    steps = sorted({s for s, _, _ in got})
    assert steps == list(range(case.steps))
    for (layer, stat_name), (low, high) in case.ranges.items():
        assert low <= got[(0, layer, stat_name)] <= high, (layer, stat_name, got[(0, layer, stat_name)])
    assert set(case.dead) <= pairs(got, "dead_frac")
    assert not set(case.not_dead) & pairs(got, "dead_frac")
    assert pairs(got, "sat_frac") == set(case.sat)
    assert ("input" in pairs(got, "act_mean")) == case.has_input
    model_params = {n for n, p in ref.model.named_parameters() if p.requires_grad}
    for stat_name in ("grad_norm", "weight_norm", "update_ratio"):
        assert pairs(got, stat_name) == model_params
    assert pairs(got, "lr") == {"optimizer"}
    assert pairs(got, "loss") == pairs(got, "grad_norm_total") == {""}
    # the activation statistics cover exactly the hooked modules that produced floating outputs
    assert pairs(got, "act_mean") - {"input"} == set(ref.order)
    # model facts
    assert facts["forward_order"] == ref.order
    assert set(facts["layers"]) == set(ref.modules)
    assert {n: facts["layers"][n]["out_shape"] for n in ref.order} == ref.out_shapes
    assert facts["batch_size"] == ref.batch_size
    assert set(facts["params"]) == {n for n, _ in ref.model.named_parameters()}


def test_nan_and_inf_input():
    """A NaN and an Inf in the input of step 1: counted exactly, and everything downstream follows."""
    torch.manual_seed(21)
    model = mlp(20, 4, hidden=16, depth=2, act=nn.ReLU)
    batches = blob_batches(3, batch=8)
    x1 = batches[1][0].clone()
    x1[0, 3] = math.nan
    x1[5, 7] = math.inf
    batches[1] = (x1, batches[1][1])
    expected, _ = reference_run(copy.deepcopy(model), sgd(0.1), batches, classify, seed=0)
    got, _ = monitor_run(model, sgd(0.1), batches, classify, seed=0)
    assert_matches(got, expected)
    assert got[(0, "input", "nonfinite")] == 0
    assert got[(1, "input", "nonfinite")] == 2
    assert math.isnan(got[(1, "input", "act_mean")])
    assert math.isnan(got[(1, "input", "act_std")])
    assert got[(1, "0", "nonfinite")] == 2 * 16  # two rows of the first Linear's output
    assert 16 <= got[(1, "1", "nonfinite")] <= 2 * 16  # ReLU(-inf) = 0 is finite; the exact count is checked above
    assert got[(0, "0", "nonfinite")] == 0
    assert math.isnan(got[(1, "", "loss")])
    assert math.isnan(got[(1, "", "grad_norm_total")])
    # the NaN step poisoned the weights: every activation of step 2 is non-finite
    assert got[(2, "4", "nonfinite")] == 8 * 4
    assert got[(2, "input", "nonfinite")] == 0


def test_input_of_first_leaf_when_root_forward_is_not_called():
    torch.manual_seed(22)
    model = Wrapper(mlp(20, 4, hidden=16, depth=2, act=nn.ReLU))
    batches = blob_batches(2, batch=8)

    def call_inner(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(m.net(x * 2.0 + 1.0), y)

    expected, _ = reference_run(copy.deepcopy(model), sgd(0.1), batches, call_inner, seed=0)
    got, _ = monitor_run(model, sgd(0.1), batches, call_inner, seed=0)
    assert_matches(got, expected)
    x0 = batches[0][0].double() * 2.0 + 1.0
    assert got[(0, "input", "act_mean")] == pytest.approx(x0.mean().item(), rel=1e-5)


@pytest.mark.parametrize(
    ("accumulate", "with_eval", "schedule"),
    [
        pytest.param(2, True, 1, id="accumulate-2-with-eval-passes"),
        pytest.param(1, False, 2, id="schedule-every-2"),
    ],
)
def test_accumulation_eval_passes_and_sparse_schedule(accumulate, with_eval, schedule):
    """Only the first training forward of a logging step is recorded; loss at every step, averaged."""
    model = mixed_activation_mlp()
    steps = 4
    batches = blob_batches(steps * accumulate, batch=16)
    eval_batch = blob_batches(1, batch=64)[0] if with_eval else None
    expected, _ = reference_run(copy.deepcopy(model), adam(1e-2), batches, classify, 0, None, accumulate, eval_batch)
    got, _ = monitor_run(model, adam(1e-2), batches, classify, 0, None, accumulate, eval_batch, schedule)
    expected = {k: v for k, v in expected.items() if k[0] % schedule == 0 or k[2] == "loss"}
    assert_matches(got, expected)
    assert pairs(got, "loss", step=1) == {""}
    assert (pairs(got, "act_mean", step=1) == set()) == (schedule == 2)
    assert sorted({s for s, _, _ in got}) == list(range(steps))


@pytest.mark.parametrize(
    "keyword", [pytest.param(False, id="closure-positional"), pytest.param(True, id="closure-keyword")]
)
def test_closure_driven_step_reads_gradients_after_the_closure(keyword):
    """``optimizer.step(closure)`` runs backward inside step(): gradients are those of this step's closure."""
    model = relu_mlp_negative_bias()
    batches = blob_batches(3)
    expected, _ = reference_run(copy.deepcopy(model), sgd(0.1, momentum=0.9), batches, classify, seed=0)
    opt = sgd(0.1, momentum=0.9)(model)
    with Monitor(model, opt, log_dir=None, schedule=1) as mon:
        for batch in batches:

            def closure(batch: Any = batch) -> torch.Tensor:
                opt.zero_grad()
                loss = classify(model, batch)
                loss.backward()
                return loss

            loss = opt.step(closure=closure) if keyword else opt.step(closure)
            mon.step(loss)
    got = records(mon.history)
    assert_matches(got, expected)
    assert got[(0, "", "grad_norm_total")] > 0


class UpdateNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 16)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(16, 4)
        self.frozen = nn.Linear(4, 4)
        self.unused = nn.Linear(3, 3)  # never called: no gradient
        self.frozen.requires_grad_(False)
        with torch.no_grad():
            self.fc1.bias.zero_()  # ||w_before|| == 0 at step 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(self.fc2(self.act(self.fc1(x))))


@pytest.mark.parametrize(
    ("make_opt", "clip"),
    [
        pytest.param(lambda m: torch.optim.SGD(m.parameters(), lr=0.1), None, id="sgd"),
        pytest.param(lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), 0.5, id="sgd-momentum-clipped"),
        pytest.param(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), None, id="adam"),
        pytest.param(
            lambda m: torch.optim.Adam(
                [{"params": [*m.fc1.parameters(), *m.unused.parameters()]}, {"params": m.fc2.parameters(), "lr": 1e-3}],
                lr=3e-2,
            ),
            None,
            id="adam-two-groups",
        ),
    ],
)
def test_update_ratio_matches_manual_parameter_diff(make_opt, clip):
    torch.manual_seed(23)
    model = UpdateNet()
    batches = blob_batches(3, batch=16)
    ref_model, brute_model = copy.deepcopy(model), copy.deepcopy(model)
    got, _ = monitor_run(model, make_opt, batches, classify, seed=0, clip=clip)

    # manual: parameter copies before and after each optimizer step
    opt = make_opt(ref_model)
    trainable = [(n, p) for n, p in ref_model.named_parameters() if p.requires_grad]
    manual: dict[Key, float] = {}
    for step, (x, y) in enumerate(batches):
        F.cross_entropy(ref_model(x), y).backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(ref_model.parameters(), clip)
        before = [p.detach().clone() for _, p in trainable]
        opt.step()
        opt.zero_grad()
        for (n, p), b in zip(trainable, before, strict=True):
            w = b.double()
            manual[(step, n, "update_ratio")] = (
                (p.detach().double() - w).norm().item() / w.norm().item() if w.norm() > 0 else math.nan
            )
    recorded = {k: v for k, v in got.items() if k[2] == "update_ratio"}
    assert set(recorded) == set(manual)
    assert math.isnan(recorded[(0, "fc1.bias", "update_ratio")])
    assert recorded[(1, "fc1.bias", "update_ratio")] > 0
    assert recorded[(0, "unused.weight", "update_ratio")] == 0
    assert got[(0, "unused.weight", "grad_norm")] == 0
    assert not any(k[1].startswith("frozen.") for k in got)
    for key, value in manual.items():
        if math.isnan(value):
            assert math.isnan(recorded[key]), key
        else:
            assert recorded[key] == pytest.approx(value, rel=1e-5, abs=1e-12), key
    assert all(recorded[(s, "fc2.weight", "update_ratio")] > 1e-5 for s in range(3))
    # ... and every other statistic of this loop against the full brute force
    expected, _ = reference_run(brute_model, make_opt, batches, classify, seed=0, clip=clip)
    assert_matches(got, expected)
    if clip is not None:  # gradients are read at optimizer.step(), i.e. after clipping
        assert got[(0, "", "grad_norm_total")] == pytest.approx(clip, rel=1e-4)
    lr_layers_ = pairs(got, "lr")
    n_groups = len(opt.param_groups)
    assert lr_layers_ == ({"optimizer"} if n_groups == 1 else {f"optimizer0.group{j}" for j in range(n_groups)})


LIGHTNING_CASES = [
    pytest.param(relu_mlp_negative_bias, blob_batches, sgd(0.1, momentum=0.9), None, id="mlp-relu"),
    pytest.param(tanh_mlp_large_weights, blob_batches, adam(1e-2), None, id="mlp-tanh"),
    pytest.param(cnn, image_batches, adam(1e-2), None, id="cnn-batchnorm"),
    pytest.param(relu_mlp_negative_bias, blob_batches, sgd(0.1), 0.01, id="mlp-relu-gradient-clipping"),
]


@pytest.mark.parametrize(("build", "make_batches", "make_opt", "clip"), LIGHTNING_CASES)
def test_lightning_callback_matches_brute_force(pkg, tmp_path, build, make_batches, make_opt, clip):
    steps = 3
    net = build()
    batches = make_batches(steps)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    # Lightning: gradients are read at on_before_optimizer_step, i.e. before its gradient clipping
    expected, ref = reference_run(
        Wrapper(copy.deepcopy(net)), make_opt, batches, classify, seed=0, clip=clip, grads_before_clip=True
    )

    cb = DiagnosticsCallback(schedule=1)
    module = make_module(pkg, copy.deepcopy(net), F.cross_entropy, lambda p: make_opt(_Params(p)))
    torch.manual_seed(0)
    kwargs = {} if clip is None else {"gradient_clip_val": clip, "gradient_clip_algorithm": "norm"}
    fit(pkg, module, loader(x, y, batch_size=len(batches[0][0])), [cb], tmp_path, max_steps=steps, **kwargs)
    got = records(cb.history)
    assert_matches(got, expected)
    if clip is not None:  # the recorded norms are the unclipped ones; the updates are the clipped ones
        assert all(got[(s, "", "grad_norm_total")] > 2 * clip for s in range(steps))
    assert sorted({s for s, _, _ in got}) == list(range(steps))
    assert all(layer.startswith("net.") for layer in pairs(got, "act_mean") - {"input"})
    assert "input" in pairs(got, "act_mean")
    assert pairs(got, "grad_norm") == {n for n, _ in ref.model.named_parameters()}


class _Params:
    """Lets an optimizer factory written for a module take ``self.parameters()`` (Lightning's hook)."""

    def __init__(self, params: Any) -> None:
        self._params = list(params)

    def parameters(self) -> list[torch.Tensor]:
        return self._params


def test_comparison_detects_disagreement():
    """The harness itself fails on a perturbed value, a dropped record or an extra record."""
    case = CASES[0].values[0]
    got, expected, _, _ = run_both(case)
    assert not mismatches(got, expected)
    for key, factor in (((1, "1", "act_std"), 1.001), ((2, "0.weight", "update_ratio"), 1.001)):
        bad = dict(got)
        bad[key] *= factor
        assert mismatches(bad, expected)
    bad = dict(got)
    bad[(0, "1", "dead_frac")] += 1 / 32
    assert mismatches(bad, expected)
    bad = dict(got)
    del bad[(0, "3", "dead_frac")]
    assert mismatches(bad, expected)
    bad = dict(got)
    bad[(0, "0", "dead_frac")] = 0.0
    assert mismatches(bad, expected)
