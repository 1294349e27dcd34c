"""A training script for the distributed tests: one process, or several (Lightning DDP, torchrun DDP/FSDP2).

Every process writes ``<out>/rank<R>.json`` (steps, stop reason, nndiag's exchange counters, the
warnings nndiag raised); rank 0's run store is in ``<out>/runs``. The same global batches are seen
in every mode: with ``P`` processes each takes every ``P``-th sample of a global batch of
``2 * half`` (DistributedSampler without shuffling), one process takes the global batch whole.

Usage::

    python tests/dist/train.py --launcher lightning --devices 2 --out DIR [--pkg pytorch_lightning]
    python -m torch.distributed.run --nproc_per_node 2 tests/dist/train.py --launcher torch --parallel fsdp2 --out DIR
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

os.environ.setdefault("NNDIAG_REPORT", "0")
torch.set_num_threads(1)

FEATURES, CLASSES, N = 12, 4, 512


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Blobs with a learnable label; the same on every rank."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(CLASSES, FEATURES, generator=g) * 2
    y = torch.randint(0, CLASSES, (N,), generator=g)
    return centers[y] + torch.randn(N, FEATURES, generator=g), y


def network(dead: bool) -> nn.Module:
    """An MLP; ``dead=True`` pushes one hidden layer's biases far negative (dead ReLUs)."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Linear(FEATURES, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.Tanh(),
        nn.Linear(32, CLASSES),
    )
    if dead:
        with torch.no_grad():
            net[2].bias.fill_(-4.0)
    return net


def inject(kind: str, rank: int) -> None:
    """Make a part of nndiag fail on rank 1 (from its first logging step on)."""
    if kind == "none" or rank != 1:
        return
    import nndiag.collect.activations as acts
    import nndiag.collect.distributed as dist_mod
    import nndiag.collect.recorder as rec

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"injected failure on rank {rank}")

    if kind == "activations":
        acts.sufficient_stats = boom  # type: ignore[assignment]
    elif kind == "step":
        rec.Recorder._local_step = boom  # type: ignore[method-assign]
    elif kind == "encode":
        dist_mod.RankCombiner._encode = boom  # type: ignore[method-assign]
    elif kind == "start":
        rec.Recorder.attach = boom  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown --inject {kind}")


def count_collectives() -> dict[str, int]:
    """Count torch.distributed collectives issued from nndiag's own code."""
    counts = {"all_reduce": 0, "all_gather_object": 0}
    dist = torch.distributed
    for name in counts:
        original = getattr(dist, name)

        def wrapper(*args: Any, _name: str = name, _orig: Any = original, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("nndiag"):
                counts[_name] += 1
            return _orig(*args, **kwargs)

        setattr(dist, name, wrapper)
    return counts


def report(out: Path, rank: int, combiner: Any, collectives: dict[str, int], caught: list[Any], **fields: Any) -> None:
    """Write this rank's ``rank<R>.json``: ``fields`` plus nndiag's exchange counters and its warnings."""
    fields.update(
        exchanges=getattr(combiner, "exchanges", None),
        negotiations=getattr(combiner, "negotiations", None),
        unplaced=getattr(combiner, "unplaced_seen", None),
        broken=getattr(combiner, "broken", None),
        collectives=collectives,
        warnings=[str(w.message).splitlines()[0] for w in caught if "nndiag" in str(w.message)],
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(fields, default=str))


def run_lightning(args: argparse.Namespace) -> None:
    L = importlib.import_module(args.pkg)
    from nndiag import DiagnosticsCallback

    x, y = data()
    lr = args.lr

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = network(args.dead)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            xb, yb = batch
            return nn.functional.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr)

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            # rank r takes every P-th sample: its k-th batch is its share of the single process's k-th batch
            rank, world = self.trainer.global_rank, self.trainer.world_size
            shard = torch.utils.data.TensorDataset(x[rank::world], y[rank::world])
            return torch.utils.data.DataLoader(shard, batch_size=2 * args.half // world, shuffle=False)

    cb = DiagnosticsCallback(
        schedule=args.schedule,
        halt_on=tuple(args.halt_on.split(",")) if args.halt_on else (),
        distributed=not args.no_combine,
    )
    strategy: Any = "auto"
    if args.devices > 1:
        strategy = L.strategies.DDPStrategy(timeout=datetime.timedelta(seconds=args.timeout))
    counts = count_collectives()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = L.Trainer(
            strategy=strategy,
            accelerator="cpu",
            devices=args.devices,
            max_steps=args.steps,
            max_epochs=100,
            logger=L.loggers.TensorBoardLogger(str(args.out / "runs"), name="", version="run"),
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            use_distributed_sampler=False,
            callbacks=[cb],
        )
        inject(args.inject, trainer.global_rank)
        trainer.fit(Module())
    combiner = getattr(cb.session, "combiner", None) if cb.session is not None else None
    report(
        args.out,
        trainer.global_rank,
        combiner,
        counts,
        caught,
        steps=trainer.global_step,
        stop_reason=cb.stop_reason,
        log_dir=cb.log_dir,
    )


def run_torch(args: argparse.Namespace) -> None:
    from nndiag import Monitor

    distributed = "RANK" in os.environ
    if distributed:
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    x, y = data()
    net = network(args.dead)
    model: nn.Module = net
    if distributed and args.parallel == "ddp":
        model = nn.parallel.DistributedDataParallel(net)
    elif distributed and args.parallel == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(net)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    counts = count_collectives() if distributed else {}
    inject(args.inject, rank)
    step_batch = 2 * args.half
    # --branch: a module that only rank 1 calls, from step 3 on (data-dependent control flow)
    recorded = nn.ModuleDict({"net": net, "extra": nn.Tanh()}) if args.branch else net
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = Monitor(recorded, opt, log_dir=args.out / "runs", schedule=args.schedule, distributed=not args.no_combine)
        for step in range(args.steps):
            lo = (step * step_batch) % N
            xb, yb = x[lo : lo + step_batch], y[lo : lo + step_batch]
            xb, yb = xb[rank::world], yb[rank::world]
            out = model(xb)
            if args.branch and rank == 1 and step >= 3:
                out = recorded["extra"](out)
            loss = nn.functional.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
        mon.close()
    combiner = mon.session.combiner
    report(args.out, rank, combiner, counts, caught, steps=mon.steps, log_dir=mon.log_dir)
    if distributed:
        torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--launcher", choices=["lightning", "torch"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pkg", default="lightning.pytorch")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--parallel", choices=["ddp", "fsdp2"], default="ddp")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--half", type=int, default=16, help="half the global batch")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--dead", action="store_true")
    parser.add_argument("--schedule", type=int, default=1)
    parser.add_argument("--halt-on", default="")
    parser.add_argument("--inject", default="none")
    parser.add_argument("--branch", action="store_true", help="a module only rank 1 calls (from step 3)")
    parser.add_argument("--no-combine", action="store_true", help="distributed=False: rank 0 records its own batch")
    parser.add_argument("--timeout", type=int, default=60, help="process-group timeout (s): a hang fails fast")
    args = parser.parse_args()
    (run_lightning if args.launcher == "lightning" else run_torch)(args)


if __name__ == "__main__":
    main()
