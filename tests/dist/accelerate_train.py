"""An Accelerate loop with Monitor for 1 or 2 CPU processes (torchrun, gloo): prepare, accumulate, backward.

Writes ``rank<N>.json`` into ``--out`` with what the rank saw.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from nndiag import Monitor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    acc = Accelerator(gradient_accumulation_steps=2, cpu=True)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ds = torch.utils.data.TensorDataset(torch.randn(256, 8), torch.randint(0, 3, (256,)))
    model, opt, loader = acc.prepare(model, opt, torch.utils.data.DataLoader(ds, batch_size=16))
    real: list[int] = []
    opt.optimizer.register_step_post_hook(lambda *a: real.append(1))
    with Monitor(model, opt, log_dir=args.out / "runs", schedule=1) as mon:
        for x, y in loader:
            with acc.accumulate(model):
                loss = nn.functional.cross_entropy(model(x), y)
                acc.backward(loss)
                opt.step()
                opt.zero_grad()
            mon.step(loss)
    h = mon.history
    report = {
        "log_dir": mon.log_dir,
        "wrapped": type(model).__name__,
        "real_steps": len(real),
        "steps": mon.steps,
        "layers": sorted(set(h[h.stat == "act_std"].layer)),
    }
    (args.out / f"rank{int(os.environ.get('RANK', 0))}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
