"""DDP on CPU (gloo) with ``remedy=True``: an lr spike on every rank, a NaN batch on one rank.

Plain loop under ``torchrun`` (``--launcher torch``) or Lightning's DDP launcher (``--launcher lightning``).
Every rank trains the same regression MLP on its own batches; each writes ``<out>/rank<R>.json`` with
the remedy's records, its steps, the final weights and the nndiag warnings it raised.

Usage::

    torchrun --standalone --nproc_per_node 2 tests/dist/remedy_train.py --launcher torch --out DIR
    python tests/dist/remedy_train.py --launcher lightning --devices 2 --out DIR
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

os.environ.setdefault("NNDIAG_REPORT", "0")
torch.set_num_threads(1)

FEATURES, BATCH = 8, 32


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, 1))


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s batch of ``step`` (different on every rank, the same in every mode)."""
    w = torch.randn(FEATURES, 1, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(BATCH, FEATURES, generator=g)
    return x, x @ w + 0.1 * torch.randn(BATCH, 1, generator=g)


def poison(step: int, rank: int, args: argparse.Namespace, x: torch.Tensor) -> torch.Tensor:
    if step == args.nan_at and rank == args.nan_rank:
        x = x.clone()
        x[0, 0] = float("nan")
    return x


def spike(step: int, opt: Any, args: argparse.Namespace) -> None:
    """``--spike-at``: the lr x100 once; ``--always-from``: lr 1e4 at every step from then (undoes every cut)."""
    for g in opt.param_groups:
        if step == args.spike_at:
            g["lr"] *= 100.0
        if 0 <= args.always_from <= step:
            g["lr"] = 1e4


def report(out: Path, rank: int, runner: Any, net: nn.Module, caught: list[Any], **fields: Any) -> None:
    params = [p.detach().flatten() for p in net.parameters()]
    flat = torch.cat(params).tolist() if params else []
    with torch.no_grad():
        xe, ye = batch(10**6, 99)
        final = float(nn.functional.mse_loss(net(xe), ye))
    fields.update(
        final=final,
        remedies=[r.to_dict() for r in runner.remedies] if runner is not None else [],
        weights=flat,
        finite=all(v == v and abs(v) != float("inf") for v in flat),
        warnings=[str(w.message).splitlines()[0] for w in caught if "nndiag" in str(w.message)],
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(fields, default=str))


def remedy_config(args: argparse.Namespace) -> Any:
    from nndiag import RemedyConfig

    return RemedyConfig(
        keep_every=args.keep_every, confirm_steps=5, sync_every=args.sync_every, max_attempts=args.max_attempts
    )


def run_torch(args: argparse.Namespace) -> None:
    from nndiag import Monitor

    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    rank = torch.distributed.get_rank()
    net = network()
    ddp = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = Monitor(net, opt, log_dir=None, schedule=1, remedy=remedy_config(args))
        for step in range(args.steps):
            x, y = batch(step, rank)
            x = poison(step, rank, args, x)
            spike(step, opt, args)
            for m in range(args.accumulate):  # micro-batches: DDP all-reduces on the last backward only
                xm, ym = x[m :: args.accumulate], y[m :: args.accumulate]
                ctx = ddp.no_sync() if m < args.accumulate - 1 else _null()
                with ctx:
                    loss = nn.functional.mse_loss(ddp(xm), ym)
                    (loss / args.accumulate).backward()
                if m < args.accumulate - 1:
                    mon.step(loss)
            opt.step()
            opt.zero_grad()
            mon.step(loss)
            if mon.should_stop:
                break
        mon.close()
    report(args.out, rank, mon.remedy, net, caught, steps=mon.steps, stop_reason=mon.stop_reason)
    torch.distributed.destroy_process_group()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def run_lightning(args: argparse.Namespace) -> None:
    L = importlib.import_module(args.pkg)
    from nndiag import DiagnosticsCallback

    class Data(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __init__(self, rank: int) -> None:
            self.rank = rank

        def __len__(self) -> int:
            return args.steps

        def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = batch(step, self.rank)
            return poison(step, self.rank, args, x), y

    class Module(L.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = network()

        def training_step(self, b: Any, batch_idx: int) -> torch.Tensor:
            spike(batch_idx, self.optimizers(), args)
            x, y = b
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

        def train_dataloader(self) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
            return torch.utils.data.DataLoader(Data(self.trainer.global_rank), batch_size=None, shuffle=False)

    cb = DiagnosticsCallback(schedule=1, store=False, tensorboard=False, report=False, remedy=remedy_config(args))
    module = Module()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = L.Trainer(
            strategy=L.strategies.DDPStrategy(timeout=datetime.timedelta(seconds=args.timeout)),
            accelerator="cpu",
            devices=args.devices,
            max_epochs=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            use_distributed_sampler=False,
            callbacks=[cb],
        )
        trainer.fit(module)
    report(
        args.out,
        trainer.global_rank,
        cb.remedy,
        module.net,
        caught,
        steps=trainer.global_step,
        stop_reason=cb.stop_reason,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--launcher", choices=["lightning", "torch"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pkg", default="lightning.pytorch")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--spike-at", type=int, default=-1)
    parser.add_argument("--always-from", type=int, default=-1)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--nan-at", type=int, default=-1)
    parser.add_argument("--nan-rank", type=int, default=1)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--keep-every", type=int, default=25)
    parser.add_argument("--sync-every", type=int, default=10)
    parser.add_argument("--timeout", type=int, default=60, help="process-group timeout (s): a hang fails fast")
    args = parser.parse_args()
    (run_lightning if args.launcher == "lightning" else run_torch)(args)


if __name__ == "__main__":
    main()
