"""Overhead of DiagnosticsCallback against plain Lightning training and the alternatives, in one process.

Models (synthetic data, CPU unless a GPU is present):
  * 3C3D: conv 64-5x5, conv 96-3x3, conv 128-3x3 (each ReLU + 2x2 max-pool), dense 512-256-10; batch 128, 3x32x32.
  * MLP 784-1000-500-100-10 (ReLU), batch 256.

Modes: ``plain``; ``default`` (nndiag's default schedule); ``every`` (``schedule=1``: light logging
steps, update ratios and weight norms every 4th step after step 20); ``every_full`` (``schedule=1,
full_every=1``: everything at every step); ``naive``
(per-layer hooks with ``.item()`` every step); ``lightning`` (``grad_norm`` + ``log_dict`` every
step); ``wandb`` (``wandb.watch(log="all", log_freq=1)`` offline; only where wandb is importable:
``bash benchmarks/wandb_env.sh`` then run with the ``PYTHONPATH`` it prints).

For each model, the modes run interleaved ``--repeats`` times, rotating their order so that none
always runs first. Step time = time between consecutive ``on_train_batch_start`` calls (it
includes every callback hook and the end-of-step work); the first ``--skip`` steps (warm-up and the
default schedule's dense start) are left out. Printed per mode: median and mean step time, their
ratios against plain, p50/p90/p99/max, ``paired x``: the median over repeats of the mode's
median step over plain's median step *in the same repeat* (robust to the machine's speed drifting
between repeats, which on a shared 2-core VM is several percent over a minute), and ``paired mean``:
the same for the mean step (the default schedule's measure).
``default`` is judged on the mean (what a user pays, logging steps at their real frequency), the
others on the median.

Garbage: before each run the benchmark collects the previous runs' garbage (``gc.collect()``), so
that a full collection triggered by what earlier runs left behind (trainers, reports) does not land
on whichever mode runs next; ``gen2`` is the number of Python generation-2 collections during the
mode's measured steps (all repeats) and ``gen2 ms`` their total time. On this CPU one such
collection of the process's ~320 k tracked objects (mostly torch's and Lightning's) takes
~130-160 ms, which is what the rare long steps in the ``max`` column are.

``--memory`` prints instead the peak resident memory of a fresh process per mode (``ru_maxrss``):
while training (read at the last batch end) and for the whole process (nndiag's post-run report
included), each with its excess over plain, and the size of one copy of the parameters (what
nndiag's weight copy holds). The child processes run with ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc):
with the default, adaptive threshold freed tensors stay in the heap and the peak varies by tens of
MiB with the order of allocations. ``mlp_wide`` (the MLP 4x wider, 11 M parameters) shows how the
excess grows with the model.

Usage:
    python benchmarks/overhead.py [--steps 300] [--repeats 3] [--models 3c3d,mlp] [--modes plain,default,...]
    python benchmarks/overhead.py --memory [--models mlp]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

import lightning.pytorch as L
import torch
from overhead_alternatives import ALTERNATIVES, WandbWatch, wandb_available
from torch import nn

from nndiag import DiagnosticsCallback

warnings.filterwarnings("ignore")


def net_3c3d() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 96, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(96, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip


def net_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 500), nn.ReLU(),
        nn.Linear(500, 100), nn.ReLU(), nn.Linear(100, 10),
    )  # fmt: skip


def net_mlp_wide() -> nn.Module:
    """The MLP 4x wider (11 M parameters): with ``--memory``, how nndiag's memory grows with the model."""
    return nn.Sequential(
        nn.Linear(784, 4000), nn.ReLU(), nn.Linear(4000, 2000), nn.ReLU(),
        nn.Linear(2000, 100), nn.ReLU(), nn.Linear(100, 10),
    )  # fmt: skip


MODELS = {
    "3c3d": (net_3c3d, (3, 32, 32), 128),
    "mlp": (net_mlp, (784,), 256),
    "mlp_wide": (net_mlp_wide, (784,), 256),
}


class Classifier(L.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class Gen2Clock:
    """Generation-2 garbage collections (start time, duration) seen by ``gc.callbacks`` while installed."""

    def __init__(self) -> None:
        self.events: list[tuple[float, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.events.append((self._start, time.perf_counter() - self._start))

    def within(self, begin: float, end: float) -> list[float]:
        """Durations of the collections that started in ``[begin, end)``."""
        return [d for t, d in self.events if begin <= t < end]


class StepTimer(L.Callback):
    """Batch-start timestamps; with ``rss``, the process's peak resident memory at each batch end (KiB)."""

    def __init__(self, rss: bool = False) -> None:
        self.starts: list[float] = []
        self.rss = rss
        self.peak_kib = 0  # ru_maxrss at the last batch end: the peak while training, before any teardown

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.rss:
            self.peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def step_times(self, skip: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[skip:], self.starts[skip + 1 :], strict=False)]


class Batches(torch.utils.data.IterableDataset):
    """The same pre-made batch over and over (no data-loading cost in the measurement)."""

    def __init__(self, shape: tuple[int, ...], batch: int, steps: int) -> None:
        self.x = torch.randn(batch, *shape)
        self.y = torch.randint(0, 10, (batch,))
        self.steps = steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.x, self.y


def callbacks_for(mode: str, directory: str) -> list[L.Callback]:
    if mode == "default":
        return [DiagnosticsCallback()]
    if mode == "every":
        return [DiagnosticsCallback(schedule=1)]
    if mode == "every_full":
        return [DiagnosticsCallback(schedule=1, full_every=1)]
    if mode == "wandb":
        return [WandbWatch(directory)]
    if mode in ALTERNATIVES:
        return [ALTERNATIVES[mode]()]
    return []


def run(
    model_name: str,
    mode: str,
    steps: int,
    seed: int,
    skip: int,
    gen2: list[float] | None = None,
    peak: list[float] | None = None,
) -> list[float]:
    """Step times after ``skip`` steps; ``gen2`` gets the durations of full collections within them.

    ``peak`` gets the process's peak resident memory (MiB) at the end of the last training batch,
    before the callbacks' teardown (nndiag's post-run report).
    """
    make, shape, batch = MODELS[model_name]
    torch.manual_seed(seed)
    gc.collect()  # earlier runs' garbage is collected now, not during this run's steps
    timer = StepTimer(rss=peak is not None)
    clock = Gen2Clock()
    gc.callbacks.append(clock)
    with tempfile.TemporaryDirectory() as d:
        callbacks: list[Any] = [*callbacks_for(mode, d), timer]
        extra = getattr(callbacks[0], "trainer_kwargs", {}) if len(callbacks) > 1 else {}
        trainer = L.Trainer(
            max_steps=steps, callbacks=callbacks, default_root_dir=d, logger=L.loggers.TensorBoardLogger(d),
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            accelerator="auto", devices=1, **extra,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(Batches(shape, batch, steps + 1), batch_size=None)
        try:
            trainer.fit(Classifier(make()), loader)
        finally:
            gc.callbacks.remove(clock)
    if gen2 is not None and len(timer.starts) > skip + 1:
        gen2 += clock.within(timer.starts[skip], timer.starts[-1])
    if peak is not None:
        peak.append(timer.peak_kib / 1024)  # Linux: KiB
    return timer.step_times(skip)


def peak_rss_mib(model: str, mode: str, steps: int) -> tuple[float, float]:
    """Peak resident memory (MiB) of a fresh process that trains ``steps`` steps in ``mode``.

    Returns the peak while training (at the last batch end) and the peak of the whole process (the
    post-run report and teardown included).
    """
    code = (
        "import resource, sys, warnings; warnings.filterwarnings('ignore'); sys.path.insert(0, sys.argv[1]);"
        "import overhead; peak = []; overhead.run(sys.argv[2], sys.argv[3], int(sys.argv[4]), 0, 0, peak=peak);"
        "print(peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    # a fixed mmap threshold: glibc otherwise raises it after a large block is freed, and the heap then
    # keeps freed tensors' pages, so the peak depends on the allocation order more than on what is live
    env = {"MALLOC_MMAP_THRESHOLD_": "131072", **os.environ}
    out = subprocess.run(
        [sys.executable, "-c", code, here, model, mode, str(steps)], capture_output=True, text=True, check=True, env=env
    )
    training, process = out.stdout.strip().splitlines()[-1].split()
    return float(training), float(process)


def memory_table(models: list[str], modes: list[str], steps: int) -> None:
    """Peak RSS per mode in fresh processes, and over plain (the weight copy is one parameter copy).

    The process imports nndiag (and its libraries) in every mode, plain included, so the excess over
    plain is what the mode allocates while it runs.
    """
    head = f"{'model':6} {'mode':10} {'training MiB':>12} {'over plain':>10} {'process MiB':>11} {'over plain':>10}"
    print(head + f" {'one param copy MiB':>18}")
    modes = ["plain", *[m for m in modes if m != "plain"]]  # the baseline, first
    for name in models:
        make = MODELS[name][0]
        copy_mib = sum(p.numel() * p.element_size() for p in make().parameters()) / 2**20
        peaks = {mode: peak_rss_mib(name, mode, steps) for mode in modes}
        base = peaks["plain"]
        for mode, (training, process) in peaks.items():
            row = f"{name:6} {mode:10} {training:12.1f} {training - base[0]:10.1f} {process:11.1f}"
            print(row + f" {process - base[1]:10.1f} {copy_mib:18.1f}")


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", type=int, default=20, help="steps left out at the start of each run")
    ap.add_argument("--models", default="3c3d,mlp")
    ap.add_argument("--modes", default="plain,default,every,naive,lightning,wandb")
    ap.add_argument("--memory", action="store_true", help="only the peak-memory table (fresh process per mode)")
    args = ap.parse_args()
    if args.memory:
        memory_table(args.models.split(","), [m for m in args.modes.split(",") if m != "wandb"], args.steps)
        return
    modes = [m for m in args.modes.split(",") if m != "wandb" or wandb_available()]
    if "wandb" in args.modes.split(",") and "wandb" not in modes:
        print("# wandb is not importable: its column is left out (bash benchmarks/wandb_env.sh)")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# nndiag overhead: {platform.platform()}, torch {torch.__version__}, {device}, {datetime.date.today()}")
    print(f"# {args.steps} steps per run, first {args.skip} left out, {args.repeats} interleaved repeats")
    head = f"{'model':6} {'mode':10} {'median ms':>9} {'mean ms':>8} {'median x':>8} {'mean x':>7}"
    head += f" {'p50':>6} {'p90':>6} {'p99':>6} {'max':>7} {'paired x':>8} {'paired mean':>11}"
    print(head + f" {'gen2':>4} {'gen2 ms':>7}")
    for name in args.models.split(","):
        times: dict[str, list[float]] = {m: [] for m in modes}
        paired: dict[str, list[float]] = {m: [] for m in modes}  # per repeat: mode median / plain median
        paired_mean: dict[str, list[float]] = {m: [] for m in modes}  # per repeat: mode mean / plain mean
        gen2: dict[str, list[float]] = {m: [] for m in modes}  # full collections within the measured steps
        for r in range(args.repeats):
            k = r % len(modes)
            this: dict[str, list[float]] = {}
            for mode in modes[k:] + modes[:k]:  # rotate the order: no mode always runs first
                this[mode] = run(name, mode, args.steps, seed=r, skip=args.skip, gen2=gen2[mode])
                times[mode] += this[mode]
            for mode, t in this.items():
                paired[mode].append(statistics.median(t) / statistics.median(this["plain"]))
                paired_mean[mode].append(statistics.fmean(t) / statistics.fmean(this["plain"]))
        base_med = statistics.median(times["plain"])
        base_mean = statistics.fmean(times["plain"])
        for mode, t in times.items():
            med, mean = statistics.median(t), statistics.fmean(t)
            qs = " ".join(f"{quantile(t, q) * 1e3:6.1f}" for q in (0.5, 0.9, 0.99))
            print(
                f"{name:6} {mode:10} {med * 1e3:9.2f} {mean * 1e3:8.2f} {med / base_med:8.3f} {mean / base_mean:7.3f}"
                f" {qs} {max(t) * 1e3:7.1f} {statistics.median(paired[mode]):8.3f}"
                f" {statistics.median(paired_mean[mode]):11.3f}"
                f" {len(gen2[mode]):4d} {sum(gen2[mode]) * 1e3:7.0f}"
            )


if __name__ == "__main__":
    main()
