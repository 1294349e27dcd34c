"""Recorded runs for the report tests: healthy, faulty, killed mid-way, hostile layer names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from torch import nn

from nndiag import Monitor
from nndiag.demo.models import blobs, mlp

HOSTILE = '<img src=x onerror="alert(1)">|`*_'


def train_blobs(root: Path, *, lr: float, bias: float | None = None, steps: int = 120, hostile: bool = False) -> str:
    """A ReLU MLP on blobs under Monitor (schedule 1, report off): returns the run directory."""
    torch.manual_seed(0)
    x, y = blobs(1024, seed=0)
    model = mlp(20, 4, hidden=64, depth=3)
    if hostile:
        model.add_module(HOSTILE, nn.Identity())  # a module name that is also HTML/Markdown
    if bias is not None:
        nn.init.constant_(model[0].bias, bias)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    with Monitor(model, opt, log_dir=root, schedule=2, report=False) as mon:
        for step in range(steps):
            idx = torch.randint(0, 896, (64,), generator=gen)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss.detach())
            if (step + 1) % 20 == 0:
                with torch.no_grad():
                    mon.record("val_loss", float(nn.functional.cross_entropy(model(x[896:]), y[896:])))
    return str(mon.log_dir)


# a training process that prints READY after 30 steps and then trains until it is killed
KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from torch import nn
    from nndiag import Monitor
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = Monitor(model, opt, log_dir=sys.argv[1], schedule=1, full_every=1, flush_seconds=0.2, report=False)
    step = 0
    while True:
        loss = model(torch.randn(16, 4)).pow(2).mean()
        loss.backward(); opt.step(); opt.zero_grad()
        mon.step(loss)
        step += 1
        if step == 30:
            print("READY", mon.log_dir, flush=True)
        time.sleep(0.01)
    """
)


def killed_run(root: Path) -> str:
    """A run whose process was killed with SIGKILL while training (its status stays ``running``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("READY"), proc.stderr.read()  # type: ignore[union-attr]
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return line.split()[1]
