"""Where a logging step's cost goes: per-part timers around nndiag's own functions, every step.

Runs the benchmark MLP (or 3C3D) under Lightning with ``DiagnosticsCallback(schedule=1)`` and wraps
the recorder's parts (training thread) and the writer's parts (background thread) with timers.
Prints each part's mean time per logging step, the plain step for scale, and the training
thread's total. Parts nest (``end_batch`` contains ``pack``, which contains ``params.pack``, ...).

With ``--clock cpu`` each part is timed by its thread's CPU time: what nndiag's own code costs,
without the time spent waiting for the interpreter lock or for cores other processes hold.

Usage:
    python benchmarks/overhead_breakdown.py [--model mlp] [--steps 200] [--schedule 1] [--clock cpu] [--full-every 1]
"""

from __future__ import annotations

import argparse
import collections
import functools
import statistics
import tempfile
import threading
import time
import warnings
from typing import Any

import lightning.pytorch as L
import torch
from overhead import MODELS, Batches, Classifier, StepTimer

from nndiag import DiagnosticsCallback
from nndiag.advice import AdvisorLoop
from nndiag.collect.activations import ActivationCollector
from nndiag.collect.noise_scale import NoiseScaleCollector
from nndiag.collect.packet import Packet
from nndiag.collect.params import ParamCollector
from nndiag.collect.recorder import Recorder
from nndiag.collect.step_losses import StepLosses
from nndiag.collect.task_probe import TaskProbe
from nndiag.pipeline import Pipeline
from nndiag.schedule import resolve_schedule
from nndiag.subscribers import Advising, MemorySubscriber, StoreSubscriber, TensorBoardSubscriber

warnings.filterwarnings("ignore")

TOTALS: dict[tuple[str, str], float] = collections.defaultdict(float)
CLOCK = [time.perf_counter]  # --clock cpu: time.thread_time (this thread's CPU only: no lock waits)
SPANS: list[tuple[str, float, float]] = []  # the writer's parts: (label, start, end)

PARTS: list[tuple[str, type, str]] = [
    ("train", Recorder, "begin_batch"),
    ("train", Recorder, "end_batch"),
    ("train", Recorder, "_local_step"),
    ("train", Recorder, "_submit"),
    ("train", ActivationCollector, "_record"),
    ("train", ActivationCollector, "_root_pre_hook"),
    ("train", ActivationCollector, "pack"),
    ("train", ParamCollector, "capture_grads"),
    ("train", ParamCollector, "snapshot"),
    ("train", ParamCollector, "pack"),
    ("train", TaskProbe, "pack"),
    ("train", TaskProbe, "saw_output"),
    ("train", TaskProbe, "note_loss"),
    ("train", TaskProbe, "note_target"),
    ("train", TaskProbe, "facts_update"),
    ("train", StepLosses, "keep"),
    ("train", Recorder, "_send_logging_step"),
    ("train", StepLosses, "take"),
    ("train", Recorder, "_logging_soon"),
    ("train", NoiseScaleCollector, "pack"),
    ("train", Recorder, "_finish_step"),
    ("train", Recorder, "_pre_step_hook"),
    ("train", Recorder, "_post_step_hook"),
    ("train", Recorder, "capture_grads"),
    ("train", Packet, "build"),
    ("train", Pipeline, "submit"),
    ("writer", Packet, "decode"),
    ("writer", MemorySubscriber, "on_rows"),
    ("writer", StoreSubscriber, "on_rows"),
    ("writer", TensorBoardSubscriber, "on_rows"),
    ("writer", Advising, "after_packet"),
    ("writer", AdvisorLoop, "run"),
    ("writer", Pipeline, "_flush"),
]


def instrument() -> None:
    """Wrap every part with a timer keyed by (thread, qualified name)."""
    for _, cls, name in PARTS:
        raw = cls.__dict__[name]
        fn = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
        label = f"{cls.__name__}.{name}"

        @functools.wraps(fn)
        def timed(*args: Any, _fn: Any = fn, _label: str = label, **kwargs: Any) -> Any:
            t0 = CLOCK[0]()
            try:
                return _fn(*args, **kwargs)
            finally:
                t1 = CLOCK[0]()
                thread = "writer" if threading.current_thread().name == "nndiag-writer" else "train"
                TOTALS[(thread, _label)] += t1 - t0
                if thread == "writer":
                    SPANS.append((_label, t0, t1))

        setattr(cls, name, classmethod(timed) if isinstance(raw, classmethod) else timed)


def fit(model: str, steps: int, callbacks: list[Any]) -> StepTimer:
    make, shape, batch = MODELS[model]
    timer = StepTimer()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        trainer = L.Trainer(
            max_steps=steps, callbacks=[*callbacks, timer], default_root_dir=d, logger=L.loggers.TensorBoardLogger(d),
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(Batches(shape, batch, steps + 1), batch_size=None)
        trainer.fit(Classifier(make()), loader)
    return timer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--schedule", default="1", help="an int, or 'default'")
    ap.add_argument("--full-every", type=int, default=4, help="RecorderConfig.full_every (1: all steps full)")
    ap.add_argument("--slowest", type=int, default=5, help="show the writer's work during the slowest steps")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="cpu: each thread's own CPU time")
    args = ap.parse_args()
    if args.clock == "cpu":
        CLOCK[0] = time.thread_time
    plain = fit(args.model, args.steps, []).step_times(20)
    instrument()
    TOTALS.clear()
    schedule = None if args.schedule == "default" else int(args.schedule)
    cb = DiagnosticsCallback(schedule=schedule, full_every=args.full_every)
    timer = fit(args.model, args.steps, [cb])
    timed = timer.step_times(20)
    should_log = resolve_schedule(schedule)
    n_log = len([s for s in range(args.steps) if should_log(s)])
    print(
        f"# {args.model}, {args.steps} steps, schedule={args.schedule}, full_every={args.full_every}: "
        f"{n_log} logging steps"
    )
    print(
        f"plain step median {statistics.median(plain) * 1e3:.2f} ms; "
        f"with nndiag {statistics.median(timed) * 1e3:.2f} ms"
    )
    print(f"{'thread':7} {'part':36} {'ms per logging step':>20}")
    for (thread, label), total in sorted(TOTALS.items(), key=lambda kv: (kv[0][0], -kv[1])):
        print(f"{thread:7} {label:36} {total / n_log * 1e3:20.3f}")
    starts = timer.starts
    order = sorted(range(20, len(starts) - 1), key=lambda i: starts[i] - starts[i + 1])[: args.slowest]
    for i in order if args.clock == "wall" else ():
        a, b = starts[i], starts[i + 1]
        busy = collections.defaultdict(float)
        for label, t0, t1 in SPANS:
            if t1 > a and t0 < b:
                busy[label] += min(t1, b) - max(t0, a)
        parts = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in sorted(busy.items(), key=lambda kv: -kv[1]))
        print(f"step {i}: {(b - a) * 1e3:.1f} ms (logging: {should_log(i)}); writer busy (ms): {parts or '-'}")


if __name__ == "__main__":
    main()
