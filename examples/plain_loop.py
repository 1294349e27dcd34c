"""nndiag in a plain PyTorch loop: wrap the loop in ``Monitor`` and call ``mon.step(loss)``.

An MLP on synthetic blobs with gradient accumulation (2 batches per optimizer step):
``mon.step`` is called every batch; nndiag counts optimizer steps itself. Run:
    python examples/plain_loop.py [--out runs]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from nndiag import Monitor
from nndiag.demo.models import blobs, mlp


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/plain")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    x, y = blobs(n=1024, features=20, classes=4, seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    model = mlp(20, 4, hidden=64, depth=3, act=nn.Tanh)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    accumulate = 2

    with Monitor(model, optimizer, log_dir=args.out) as mon:
        for _ in range(args.epochs):
            for i, (xb, yb) in enumerate(loader):
                loss = nn.functional.cross_entropy(model(xb), yb)
                (loss / accumulate).backward()
                if (i + 1) % accumulate == 0:
                    optimizer.step()
                    optimizer.zero_grad()
                mon.step(loss)  # every batch; the optimizer steps are counted by nndiag

    h = mon.history
    ratio = h[(h.stat == "update_ratio") & (h.layer == "0.weight")]
    print(f"{mon.steps} optimizer steps recorded into {mon.log_dir}")
    print(f"update/weight ratio of the first layer: median {ratio.value.median():.2e} (healthy is about 1e-3)")
    return str(mon.log_dir)


if __name__ == "__main__":
    main()
