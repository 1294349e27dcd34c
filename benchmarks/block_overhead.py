"""nndiag's cost per step, measured in alternating blocks of one training run.

``overhead.py`` compares whole runs; on a shared 2-core VM the plain step drifts by 10-40% between
runs of one script, so its ratios cannot resolve a few percent. ``logging_step_cost.py`` resolves
one logging step against its neighbours, but the writer's and the advisors' work lands on every
step alike and cancels there. Here one plain PyTorch loop alternates blocks of ``--block`` steps
with nndiag *on* (its schedule running) and *off* (nndiag attached, its schedule saying "not a
logging step"), so everything nndiag does in an on-block counts (logging steps at their real
frequency, the writer thread, TensorBoard and SQLite, the advisor checks) and the machine's drift
cancels: each on-block is divided by the mean of the two off-blocks beside it.

The on-blocks follow the mode's schedule in *their own* step count: with the default schedule, the
on-blocks together are one run of the default schedule (every step to 20, which is not measured,
then every 10th to 200 ("middle"), then every 50th ("late")). The first ``--warmup`` steps of every
block are not measured, so that work of an on-block that spills into the next block (a check that
started at its end, a writer burst up to 200 ms later) is not counted as free. ``logging`` is the
share of the measured on-steps that were logging steps, beside the schedule's own.

Modes: ``default`` (``Monitor(...)``, schedule and advisors as shipped, TensorBoard and run store
written), ``nocheck`` (the default without advisor checks, ``diagnose=False``) and ``nowrite`` (the
default without TensorBoard or run store, ``log_dir=None``) to attribute the default's cost,
``every10`` (the default's middle phase, every 10th step, for the whole run), ``every``
(``schedule=1``), ``idle`` (on-blocks attach a ``Monitor`` that logs only its first step, in the
warm-up, off-blocks have none: what nndiag costs a non-logging step), ``kept`` (``idle`` with
``park_hooks=False``: the forward hooks stay on the modules), ``naive`` (a hand-written monitor:
per-layer forward hooks reading the output's mean and std with ``.item()``, every gradient norm with
``.item()``, switched on and off with the blocks; no nndiag). Printed per mode and phase: the ratio
of the mean step (sum of the on-blocks' measured steps over the off-blocks'), the same ratio of the
process's CPU time per step (``cpu``: all threads, the writer's included; torch's worker threads
spin while they wait, so it tracks wall time on a busy machine), the median over blocks of the
block ratios, the median step and p90/p99/max of on against off steps, and the slowest on step over
the slowest off step (the stall target: within 2x).

The off-blocks of ``default``, ``every10`` and ``every`` are not plain PyTorch: ``Monitor.step``
runs (a non-logging step does no tensor work but keeps the loss's detached view;
``tests/test_overhead_paths.py``) and the forward hooks are parked, off the modules, until the
next logging step (``nndiag.collect.hook_parking``). ``idle`` measures that against plain; a
mode's cost over plain is its ratio times ``idle``'s. ``idle us`` is the wall time of
``Monitor.step`` on an off step.

Usage:
    python benchmarks/block_overhead.py [--model mlp|3c3d] [--modes default,every10,every,idle,naive]
        [--blocks 24] [--block 60] [--warmup 15] [--repeats 2]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from logging_step_cost import plain_setup, quantile
from overhead import MODELS
from overhead_alternatives import NaiveHooks
from torch import nn

from nndiag import Monitor
from nndiag.schedule import DENSE_STEPS, MIDDLE_END, MIDDLE_EVERY, default_schedule

warnings.filterwarnings("ignore")
DEFAULTS = ("default", "nocheck", "nowrite")  # the default schedule, whole or without a part
IDLE = ("idle", "kept")  # a Monitor attached for the on-blocks only, never logging in them


class BlockGate:
    """A schedule that follows ``inner`` in the on-blocks' own step count and is False in the off-blocks.

    Example:
        >>> gate = BlockGate(lambda s: True, lead=2, block=3)
        >>> [gate(s) for s in range(11)]  # lead (on), off, on, off
        [True, True, False, False, False, True, True, True, False, False, False]
        >>> [gate.phase_step(s) for s in (0, 1, 5, 7)]
        [0, 1, 2, 4]
    """

    def __init__(self, inner: Callable[[int], bool], lead: int, block: int) -> None:
        self.inner, self.lead, self.block = inner, lead, block

    def on(self, step: int) -> bool:
        """Whether real step ``step`` is in the lead or in an on-block."""
        return step < self.lead or ((step - self.lead) // self.block) % 2 == 1

    def phase_step(self, step: int) -> int:
        """The on-blocks' own step count at real step ``step`` (an on step)."""
        if step < self.lead:
            return step
        k = (step - self.lead) // self.block  # block index (odd: on)
        return self.lead + (k // 2) * self.block + (step - self.lead) % self.block

    def __call__(self, step: int) -> bool:
        return self.on(step) and self.inner(self.phase_step(step))


@dataclass
class Blocks:
    """Measured step times (s) per block, with whether the block was on and its phase."""

    times: list[list[float]] = field(default_factory=list)
    cpu: list[list[float]] = field(default_factory=list)  # the process's CPU time (all threads) per step
    on: list[bool] = field(default_factory=list)
    phase: list[str] = field(default_factory=list)
    idle: list[float] = field(default_factory=list)  # Monitor.step on off steps (s)
    logged: list[int] = field(default_factory=list)  # logging steps among each block's measured steps


def one_run(model_name: str, mode: str, blocks: int, block: int, warmup: int, log_dir: str) -> Blocks:
    model, opt, xs, ys = plain_setup(model_name)
    lead = DENSE_STEPS if mode in (*DEFAULTS, "every10") else 0
    inner = {"every10": lambda s: s < DENSE_STEPS or s % MIDDLE_EVERY == 0} | dict.fromkeys(DEFAULTS, default_schedule)
    gate = BlockGate(inner.get(mode, lambda s: True), lead, block)
    mon = None
    if mode in (*DEFAULTS, "every10", "every"):
        where = None if mode == "nowrite" else log_dir
        mon = Monitor(model, opt, log_dir=where, schedule=gate, diagnose=mode != "nocheck")
    naive = NaiveHooks(model, active=False) if mode == "naive" else None
    out = Blocks()
    gc.collect()
    total = lead + 2 * blocks * block
    start, start_cpu = time.perf_counter(), time.process_time()
    for step in range(total):
        on = gate.on(step)
        if naive is not None:
            naive.active = on
        if mode in IDLE and on != (mon is not None):  # an on-block begins (attach) or ends (close)
            if mon is None:
                # one logging step (in the warm-up): nndiag parks its hooks only once they recorded a forward
                park = mode == "idle"
                mon = Monitor(model, opt, log_dir=None, schedule=lambda s: s == 0, diagnose=False, park_hooks=park)
            else:
                mon.close()
                mon = None
        logs = mon is not None and mode not in IDLE and gate(mon.steps)
        x, y = xs[step % 4], ys[step % 4]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if naive is not None:
            naive.before_step()
        opt.step()
        t0 = time.perf_counter()
        if mon is not None:
            mon.step(loss, target=y)
        now, now_cpu = time.perf_counter(), time.process_time()
        if step >= lead:
            k = (step - lead) // block
            if (step - lead) % block == 0:
                out.times.append([])
                out.cpu.append([])
                out.logged.append(0)
                out.on.append(k % 2 == 1)
                out.phase.append("middle" if gate.phase_step(step) < MIDDLE_END else "late")
            if (step - lead) % block >= warmup:
                out.times[-1].append(now - start)
                out.cpu[-1].append(now_cpu - start_cpu)
                out.logged[-1] += logs
            if not on and mon is not None:
                out.idle.append(now - t0)
        start, start_cpu = now, now_cpu
    if mon is not None:
        mon.close()
    if naive is not None:
        naive.close()
    return out


def summarise(runs: list[Blocks], phase: str | None) -> str:
    """One line: mean ratio, median block ratio, quantile ratios, slowest step ratio."""
    on_steps: list[float] = []
    off_steps: list[float] = []
    on_cpu: list[float] = []
    off_cpu: list[float] = []
    block_ratios: list[float] = []
    logged = 0
    for r in runs:
        means = [statistics.fmean(t) for t in r.times]
        for i, (is_on, ph) in enumerate(zip(r.on, r.phase, strict=True)):
            if not is_on or (phase is not None and ph != phase):
                continue
            beside = [means[j] for j in (i - 1, i + 1) if 0 <= j < len(means)]
            block_ratios.append(means[i] / statistics.fmean(beside))
            logged += r.logged[i]
            on_steps += r.times[i]
            off_steps += [s for j in (i - 1, i + 1) if 0 <= j < len(means) for s in r.times[j]]
            on_cpu += r.cpu[i]
            off_cpu += [s for j in (i - 1, i + 1) if 0 <= j < len(means) for s in r.cpu[j]]
    if not block_ratios:
        return "no blocks"
    return (
        f"{len(block_ratios):3d} blocks | mean x{statistics.fmean(on_steps) / statistics.fmean(off_steps):.3f} | "
        f"cpu x{statistics.fmean(on_cpu) / statistics.fmean(off_cpu):.3f} | "
        f"block median x{statistics.median(block_ratios):.3f} ({min(block_ratios):.3f}-{max(block_ratios):.3f}) | "
        f"median step x{statistics.median(on_steps) / statistics.median(off_steps):.3f} | "
        f"p90 x{quantile(on_steps, 0.9) / quantile(off_steps, 0.9):.3f} "
        f"p99 x{quantile(on_steps, 0.99) / quantile(off_steps, 0.99):.3f} | "
        f"max {max(on_steps) * 1e3:.1f} / {max(off_steps) * 1e3:.1f} ms (x{max(on_steps) / max(off_steps):.2f}) | "
        f"off median {statistics.median(off_steps) * 1e3:.2f} ms | logging {logged}/{len(on_steps)}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mlp", choices=sorted(MODELS))
    ap.add_argument("--modes", default="default,every10,every,idle,naive")
    ap.add_argument("--blocks", type=int, default=24, help="on-blocks per run (as many off-blocks)")
    ap.add_argument("--block", type=int, default=60, help="steps per block")
    ap.add_argument("--warmup", type=int, default=15, help="steps at the start of each block not measured")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(f"# {args.model}, {args.blocks} on- and off-blocks of {args.block} steps ({args.warmup} not measured), "
          f"{args.repeats} repeats; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, {datetime.date.today()}")  # fmt: skip
    modes = args.modes.split(",")
    runs: dict[str, list[Blocks]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            with tempfile.TemporaryDirectory() as d:
                runs[mode].append(one_run(args.model, mode, args.blocks, args.block, args.warmup, d))
    for mode in modes:
        idle = [s for r in runs[mode] for s in r.idle]
        print(f"{mode:7s} all    {summarise(runs[mode], None)}"
              + (f" | idle {statistics.median(idle) * 1e6:.0f} us" if idle else ""))  # fmt: skip
        if mode in DEFAULTS:
            for phase in ("middle", "late"):
                print(f"{mode:7s} {phase:6s} {summarise(runs[mode], phase)}")


if __name__ == "__main__":
    main()
