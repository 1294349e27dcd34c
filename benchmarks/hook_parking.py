"""What parking nndiag's forward hooks saves a non-logging step, step by step in one run.

A module with any forward hook takes torch's hooked call path even when the hook returns at once.
nndiag parks its hooks (takes them off the modules) from the first non-logging step to the next
logging step (``nndiag.collect.hook_parking``). Here one plain loop under a ``Monitor`` that logs
only step 0 alternates every step between *kept* (the hooks put back and pinned, as with
``park_hooks=False``) and *parked* (as shipped), so the machine's drift cancels pair by pair.
Whole steps are timed (forward, backward, optimizer step, ``Monitor.step``); the switching itself
is outside the timed region. Printed per model: the mean and median of the kept steps over the
parked ones and the standard error of the mean pair ratio.

Models: ``mlp`` (784-1000-500-100-10, batch 256, 7 hooked modules) and ``gpt2`` (a 4-layer GPT-2
built from a config, ``n_embd=128``, 8 x 64 tokens, ~50 hooked modules; needs ``transformers``).

Usage:
    python benchmarks/hook_parking.py [--models mlp,gpt2] [--pairs 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from logging_step_cost import plain_setup
from torch import nn

from nndiag import Monitor

warnings.filterwarnings("ignore")
WARMUP = 30


def mlp_step() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[int], torch.Tensor]]:
    model, opt, xs, ys = plain_setup("mlp")
    return model, opt, lambda i: nn.functional.cross_entropy(model(xs[i % 4]), ys[i % 4])


def gpt2_step() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[int], torch.Tensor]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=4, n_embd=128, n_head=4, vocab_size=1000, n_positions=64, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = [torch.randint(0, 1000, (8, 64)) for _ in range(4)]
    return model, opt, lambda i: model(input_ids=ids[i % 4], labels=ids[i % 4]).loss


def one_run(name: str, pairs: int) -> tuple[list[float], list[float]]:
    """Step times (s) of the kept and of the parked steps, in pairs."""
    model, opt, loss_of = {"mlp": mlp_step, "gpt2": gpt2_step}[name]()
    mon = Monitor(model, opt, log_dir=None, schedule=lambda s: s == 0, diagnose=False)
    acts = mon.session.recorder.acts
    kept: list[float] = []
    parked: list[float] = []
    for i in range(WARMUP + 2 * pairs):
        keep = i % 2 == 0
        acts.pinned = keep
        if keep:
            acts.parking.restore()
        else:
            acts.park()
        if i < WARMUP + 2:  # the switch works: hooks on the modules exactly on kept steps
            assert any(m._forward_hooks for m in model.modules()) == keep, (i, keep)
        start = time.perf_counter()
        loss = loss_of(i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss)
        took = time.perf_counter() - start
        if i >= WARMUP:
            (kept if keep else parked).append(took)
    mon.close()
    return kept, parked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,gpt2")
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(f"# {args.pairs} kept/parked step pairs per run, {args.repeats} repeats; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{datetime.date.today()}")  # fmt: skip
    for name in args.models.split(","):
        kept: list[float] = []
        parked: list[float] = []
        for _ in range(args.repeats):
            k, p = one_run(name, args.pairs)
            kept += k
            parked += p
        ratios = [a / b for a, b in zip(kept, parked, strict=True)]
        se = statistics.stdev(ratios) / math.sqrt(len(ratios))
        print(f"{name:5s} kept/parked: mean x{statistics.fmean(kept) / statistics.fmean(parked):.4f} | "
              f"median x{statistics.median(kept) / statistics.median(parked):.4f} | "
              f"mean pair ratio x{statistics.fmean(ratios):.4f} +- {se:.4f} | "
              f"parked median {statistics.median(parked) * 1e3:.2f} ms, "
              f"saved {(statistics.median(kept) - statistics.median(parked)) * 1e3:.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
