"""What one logging step costs the training loop, measured against the non-logging steps of the same run.

``overhead.py`` compares whole runs, plain against nndiag, interleaved. On a shared 2-core VM the
plain step drifts by 10-40% between runs of the same script, so a run-against-run ratio cannot
resolve a few percent. Here one plain PyTorch loop runs under ``Monitor`` with logging on every
other step: each logging step's neighbours are non-logging steps of the same run, a few
milliseconds apart, so the machine's drift cancels. Printed per run: the median (and p90) of the
logging steps over the median (p90) of the non-logging steps, for

* ``light``: light logging steps only after step 20 (``full_every`` huge): activation means, stds,
  saturated counts, gradient norms, the loss; what most steps of ``schedule=1`` record;
* ``full``: every logging step full (``full_every=1``): also the weight copy, update ratios, weight
  norms, per-unit maxima (dead units) and the output's statistics.

What this does not show: the writer thread's and the advisors' work lands on every step alike
(logging or not), so it cancels here; ``overhead.py`` and ``overhead_breakdown.py`` show it. A
non-logging step runs nndiag's hooks too, but they return after a few attribute checks.

Usage:
    python benchmarks/logging_step_cost.py [--model mlp|3c3d] [--steps 600] [--repeats 2] [--advisors]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
import warnings

import torch
from overhead import MODELS
from torch import nn

from nndiag import Monitor, RecorderConfig

warnings.filterwarnings("ignore")
SKIP = 20  # the dense start: every logging step up to step 20 is full


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def plain_setup(model_name: str) -> tuple[nn.Module, torch.optim.Optimizer, list[torch.Tensor], list[torch.Tensor]]:
    """A plain loop's model (seeded), its SGD with momentum, and four fixed input and label batches."""
    make, shape, batch = MODELS[model_name]
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xs = [torch.randn(batch, *shape) for _ in range(4)]
    ys = [torch.randint(0, 10, (batch,)) for _ in range(4)]
    return model, opt, xs, ys


def one_run(model_name: str, kind: str, steps: int, advisors: bool) -> tuple[list[float], list[float]]:
    """Step times (s) of the logging and of the non-logging steps after ``SKIP``."""
    model, opt, xs, ys = plain_setup(model_name)
    config = RecorderConfig(full_every=1 if kind == "full" else 10**9)
    mon = Monitor(model, opt, log_dir=None, schedule=lambda s: s % 2 == 0, config=config, diagnose=advisors)
    logging, plain = [], []
    start = time.perf_counter()
    for i in range(steps):
        step = mon.steps
        x, y = xs[i % 4], ys[i % 4]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss, target=y)
        now = time.perf_counter()
        if step >= SKIP:
            (logging if step % 2 == 0 else plain).append(now - start)
        start = now
    mon.close()
    return logging, plain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mlp", choices=sorted(MODELS))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--advisors", action="store_true", help="run the advisors too (default: off)")
    args = ap.parse_args()
    print(f"# {args.model}, {args.steps} steps, logging on even steps; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{datetime.date.today()}")  # fmt: skip
    ratios: dict[str, list[float]] = {"light": [], "full": []}
    for r in range(args.repeats):
        for kind in ("light", "full") if r % 2 == 0 else ("full", "light"):
            logging, plain = one_run(args.model, kind, args.steps, args.advisors)
            med, p90 = (
                statistics.median(logging) / statistics.median(plain),
                quantile(logging, 0.9) / quantile(plain, 0.9),
            )
            ratios[kind].append(med)
            print(f"{kind:5s} repeat {r}: logging step median {statistics.median(logging) * 1e3:7.2f} ms, "
                  f"non-logging {statistics.median(plain) * 1e3:7.2f} ms: x{med:.3f} (p90 x{p90:.3f})")  # fmt: skip
    for kind, xs in ratios.items():
        print(f"{kind:5s}: median over repeats x{statistics.median(xs):.3f} (range {min(xs):.3f}-{max(xs):.3f})")


if __name__ == "__main__":
    main()
