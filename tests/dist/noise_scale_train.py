"""DDP on CPU (gloo) with nndiag's Monitor, for the gradient-noise-scale test; also runs as one process.

The learning rate is 0, so every step draws batches from the same gradient distribution: the mean of the
recorded estimates must match the brute-force ``|G|²`` and ``tr Σ`` (``tests/noise_reference.py``).

Usage::

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist/noise_scale_train.py --out DIR
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("NNDIAG_REPORT", "0")
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from noise_reference import loss_fn, model, problem  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accumulate", type=int, default=1)
    args = ap.parse_args()
    from nndiag import Monitor

    distributed = "RANK" in os.environ
    if distributed:
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = torch.distributed.get_rank() if distributed else 0
    x, y = problem()
    net = model()
    ddp = torch.nn.parallel.DistributedDataParallel(net) if distributed else net
    opt = torch.optim.SGD(ddp.parameters(), lr=0.0)
    gen = torch.Generator().manual_seed(100 + rank)
    log_dir = args.out / "runs" if rank == 0 else None
    with Monitor(net, opt, log_dir=log_dir, schedule=1) as mon:
        for _ in range(args.steps):
            for m in range(args.accumulate):
                idx = torch.randint(0, len(x), (args.batch,), generator=gen)
                loss = loss_fn(ddp(x[idx]), y[idx])
                (loss / args.accumulate).backward()
                if m < args.accumulate - 1:
                    mon.step(loss)
            opt.step()
            opt.zero_grad()
            mon.step(loss)
        run_dir = mon.log_dir
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps({"log_dir": str(run_dir) if run_dir else None}))
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
