"""Overhead of DiagnosticsCallback against plain Lightning training, in one process.

Models (synthetic data, CPU unless a GPU is present):
  * 3C3D: conv 64-5x5, conv 96-3x3, conv 128-3x3 (each ReLU + 2x2 max-pool), dense 512-256-10; batch 128, 3x32x32.
  * MLP 784-1000-500-100-10 (ReLU), batch 256.

For each model, plain / default schedule / schedule=1 runs are interleaved ``--repeats`` times,
rotating their order so that none always runs first.
Step time = time between consecutive ``on_train_batch_start`` calls (it includes every
callback hook). Printed: ratio of median step times (the issue's measure) and of mean step
times (which also charges the logging steps), each against plain training.

Usage:
    python benchmarks/overhead.py [--steps 300] [--repeats 3] [--models 3c3d,mlp]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import warnings

import lightning.pytorch as L
import torch
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


MODELS = {"3c3d": (net_3c3d, (3, 32, 32), 128), "mlp": (net_mlp, (784,), 256)}


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


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def step_times(self, skip: int = 5) -> list[float]:
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


def run(model_name: str, mode: str, steps: int, seed: int) -> list[float]:
    make, shape, batch = MODELS[model_name]
    torch.manual_seed(seed)
    timer = StepTimer()
    callbacks: list[L.Callback] = [timer]
    if mode == "default":
        callbacks.insert(0, DiagnosticsCallback())
    elif mode == "every":
        callbacks.insert(0, DiagnosticsCallback(schedule=1))
    with tempfile.TemporaryDirectory() as d:
        trainer = L.Trainer(
            max_steps=steps, callbacks=callbacks, default_root_dir=d, logger=L.loggers.TensorBoardLogger(d),
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            accelerator="auto", devices=1,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(Batches(shape, batch, steps + 1), batch_size=None)
        trainer.fit(Classifier(make()), loader)
    return timer.step_times()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="3c3d,mlp")
    args = ap.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# nndiag overhead: {platform.platform()}, torch {torch.__version__}, {device}")
    print(f"# {args.steps} steps per run, {args.repeats} interleaved repeats; ratios vs plain training")
    print(f"{'model':6} {'mode':8} {'median ms':>10} {'mean ms':>9} {'median x':>9} {'mean x':>7}")
    for name in args.models.split(","):
        times: dict[str, list[float]] = {"plain": [], "default": [], "every": []}
        modes = list(times)
        for r in range(args.repeats):
            for mode in modes[r % 3 :] + modes[: r % 3]:  # rotate the order: no mode always runs first
                times[mode] += run(name, mode, args.steps, seed=r)
        base_med = statistics.median(times["plain"])
        base_mean = statistics.fmean(times["plain"])
        for mode, t in times.items():
            med, mean = statistics.median(t), statistics.fmean(t)
            print(
                f"{name:6} {mode:8} {med * 1e3:10.2f} {mean * 1e3:9.2f} {med / base_med:9.3f} {mean / base_mean:7.3f}"
            )


if __name__ == "__main__":
    main()
