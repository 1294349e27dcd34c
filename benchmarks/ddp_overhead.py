"""Overhead of nndiag in a DDP run (plain loop under torchrun), against the same DDP loop without it.

Every rank trains the MLP 784-1000-500-100-10 (ReLU) on its own synthetic batch; plain and
nndiag rounds alternate ``--repeats`` times in the same processes. Printed on rank 0: the median
and mean step time of each, and their ratios (nndiag / plain), for the default schedule and for
``schedule=1`` (an exchange at every step).

Usage:
    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/ddp_overhead.py [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch
import torch.distributed as dist
from torch import nn

from nndiag import Monitor

warnings.filterwarnings("ignore")


def net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 500), nn.ReLU(),
        nn.Linear(500, 100), nn.ReLU(), nn.Linear(100, 10),
    )  # fmt: skip


def run(model: nn.Module, steps: int, batch: int, schedule: int | None, record: bool) -> list[float]:
    """Step times (s) of ``steps`` DDP steps, with or without a Monitor."""
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device is not None else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x = torch.randn(batch, 784, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    mon = Monitor(model, opt, log_dir=None, schedule=schedule, diagnose=False, tensorboard=False) if record else None
    times = []
    for _ in range(steps):
        if device is not None:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss)
        if device is not None:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if mon is not None:
        mon.close()
    return times[5:]  # warm-up


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // dist.get_world_size()))
    torch.manual_seed(0)
    variants = {"plain": (None, False), "default": (None, True), "every step": (1, True)}
    results: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats):
        order = list(variants)[r % 3 :] + list(variants)[: r % 3]
        for name in order:
            schedule, record = variants[name]
            results[name] += run(net(), args.steps, args.batch, schedule, record)
    if rank == 0:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
        print(f"DDP x{dist.get_world_size()} ({dist.get_backend()}), {device}, torch {torch.__version__}")
        base_med, base_mean = statistics.median(results["plain"]), statistics.fmean(results["plain"])
        for name, t in results.items():
            med, mean = statistics.median(t), statistics.fmean(t)
            print(
                f"{name:>11}: median {med * 1e3:7.2f} ms (x{med / base_med:.2f})  mean {mean * 1e3:7.2f} ms "
                f"(x{mean / base_mean:.2f})"
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
