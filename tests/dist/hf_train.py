"""A tiny BERT under the Hugging Face Trainer with NndiagCallback, for 1 or 2 CPU processes (torchrun, gloo).

Writes ``rank<N>.json`` into ``--out`` with what the rank saw (run directory, steps, losses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from test_transformers import TokenData, arguments, bert
from transformers import Trainer

from nndiag.integrations.transformers import NndiagCallback


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cb = NndiagCallback(schedule=1)
    kw = {"max_steps": 6, "gradient_accumulation_steps": 2, "per_device_train_batch_size": 4}
    if "RANK" in os.environ:
        kw["ddp_backend"] = "gloo"
    trainer = Trainer(
        model=bert(), args=arguments(args.out / "trainer", **kw), train_dataset=TokenData(96), callbacks=[cb]
    )
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    h = cb.history
    report = {
        "log_dir": cb.log_dir,
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "global_step": trainer.state.global_step,
        "steps": cb.session.step if cb.session else None,
        "logged": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "recorded": h[h.stat == "loss"].sort_values("step").value.tolist(),
        "hooks_left": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in trainer.model.modules()),
    }
    (args.out / f"rank{rank}.json").write_text(json.dumps(report))
    if torch.distributed.is_initialized():
        # The Trainer leaves the process group up. Without this, gloo's worker threads can outlive the interpreter
        # and abort the process at exit ("terminate called without an active exception", SIGABRT), now and then.
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
