"""Memory and advisor-check time of nndiag over a long run (does nndiag's memory stay flat?).

A plain PyTorch loop trains a tiny MLP (32-64-64-10, ReLU, SGD, batch 32, pre-made batches)
for ``--steps`` optimizer steps (default 100,000) under :class:`nndiag.Monitor` with the default
schedule (every step for 20 steps, every 10th until 200, then every 50th), writing the run store
and TensorBoard files into a temporary folder. At each checkpoint it waits for the writer thread,
collects garbage and records:

* ``traced MB``: Python/numpy heap in use (``tracemalloc``) minus the heap before the Monitor was
  created (after a 40-step warm-up run, so imports are not counted): nndiag's memory (the loop
  itself allocates nothing that outlives a step);
* ``RSS MB``: growth of the resident set size of the whole process (``/proc/self/status``) since then;
* ``rows``: rows in nndiag's in-memory history window (``RecorderConfig.memory_rows`` bounds it);
* ``frame ms`` / ``rules ms``: one advisor check done by hand on the current window: building the
  history frame, then evaluating every rule on it (what the background checks cost at this point);
* ``bg checks``: background advisor checks run so far, and the longest one in the last interval;
* ``store MB``: size of ``nndiag.sqlite`` (with its WAL).

Finally the ratio of nndiag's memory at the last checkpoint to that at 10,000 steps.

Usage:
    python benchmarks/long_run_memory.py [--steps 100000] [--memory-rows N] [--no-tracemalloc]
"""

from __future__ import annotations

import argparse
import gc
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from torch import nn

from nndiag import Monitor
from nndiag.rules.view import RunView


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux), NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def warm_up(model: nn.Module, opt: torch.optim.Optimizer, batches: list, tmp: str) -> None:
    """A short recorded run first, so lazy imports and caches are not counted as growth."""
    with Monitor(model, opt, log_dir=str(Path(tmp) / "warmup"), report=False) as mon:
        for step in range(40):
            mon.step(train_step(model, opt, batches[step % len(batches)]))
        _ = mon.history


def checkpoints(steps: int) -> list[int]:
    marks = {1000, 2000, 5000, *range(10_000, steps + 1, 10_000), steps}
    return sorted(m for m in marks if m <= steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--memory-rows", type=int, default=None, help="RecorderConfig.memory_rows (default: nndiag's)")
    ap.add_argument("--no-tracemalloc", action="store_true", help="RSS only (tracemalloc slows Python ~2x)")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = [(torch.randn(32, 32), torch.randint(0, 10, (32,))) for _ in range(64)]
    options: dict[str, object] = {"report": False}
    if args.memory_rows is not None:
        options["memory_rows"] = args.memory_rows

    versions = f"torch {torch.__version__}, python {platform.python_version()}"
    print(f"# nndiag long-run memory: {platform.platform()}, {versions}")
    print(f"# tiny MLP 32-64-64-10, {args.steps} optimizer steps, default schedule, options {options or 'default'}")
    with tempfile.TemporaryDirectory() as tmp:
        warm_up(model, opt, batches, tmp)  # imports and one-time caches: not part of the per-step growth
        gc.collect()
        if not args.no_tracemalloc:
            tracemalloc.start()
        base_traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        base_rss = rss_mb()
        mon = Monitor(model, opt, log_dir=tmp, **options)
        session = mon.session
        pipeline = session.pipeline
        advice = session.advice
        assert advice is not None
        bg: list[tuple[int, float]] = []  # (step, seconds) of each background advisor check
        run = advice.run

        def timed_run(history, facts):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return run(history, facts)
            finally:
                bg.append((session.step, time.perf_counter() - t))

        advice.run = timed_run  # type: ignore[method-assign]
        header = (
            f"{'step':>7} {'traced MB':>9} {'RSS MB':>7} {'rows':>8} {'frame ms':>8} {'rules ms':>8} "
            f"{'bg checks':>9} {'bg max ms':>9} {'store MB':>8} {'s/1k steps':>10}"
        )
        print(header)
        results: dict[int, tuple[float, int]] = {}
        marks = checkpoints(args.steps)
        t_last, step_last, n_bg = time.perf_counter(), 0, 0
        step = 0
        for mark in marks:
            while step < mark:
                mon.step(train_step(model, opt, batches[step % len(batches)]))
                step += 1
            speed = (time.perf_counter() - t_last) / (step - step_last) * 1000
            pipeline.drain()
            gc.collect()
            traced = (tracemalloc.get_traced_memory()[0] - base_traced) / 2**20 if tracemalloc.is_tracing() else 0.0
            rss = rss_mb() - base_rss
            t0 = time.perf_counter()
            frame = pipeline.memory.frame()
            t1 = time.perf_counter()
            advice.advisor.evaluate(RunView(frame, {**pipeline.facts, **advice.extra_facts}))
            t2 = time.perf_counter()
            rows = len(frame)
            del frame
            recent = [s for _, s in bg[n_bg:]]
            n_bg = len(bg)
            store = sum(p.stat().st_size for p in Path(tmp).glob("**/nndiag.sqlite*"))
            traced_text = f"{traced:.2f}" if tracemalloc.is_tracing() else "-"
            results[step] = (traced if tracemalloc.is_tracing() else rss, rows)
            print(
                f"{step:7d} {traced_text:>9} {rss:7.1f} {rows:8d} {(t1 - t0) * 1e3:8.1f} {(t2 - t1) * 1e3:8.1f} "
                f"{len(bg):9d} {max(recent, default=0.0) * 1e3:9.1f} {store / 2**20:8.2f} {speed:10.3f}",
                flush=True,
            )
            t_last, step_last = time.perf_counter(), step
        mon.close()
        h = mon.history
        print(
            f"# history after close: {len(h)} rows, steps {int(h.step.min())}-{int(h.step.max())} (complete run: "
            f"{'from memory' if pipeline.memory.complete else 'read back from the store'})"
        )
        what = "traced" if tracemalloc.is_tracing() else "RSS"
        last = marks[-1]
        if 10_000 in results and last > 10_000 and results[10_000][0] > 0:
            (m10, r10), (m_last, r_last) = results[10_000], results[last]
            print(f"# nndiag memory ({what}) at {last} / at 10000 steps: {m_last / m10:.2f}x")
            if r_last > r10:
                per_row = (m_last - m10) * 2**20 / (r_last - r10)
                print(
                    f"# growth 10000 -> {last} steps: {m_last - m10:.2f} MB for {r_last - r10} more rows in memory "
                    f"({per_row:.0f} bytes per row)"
                )


if __name__ == "__main__":
    main()
