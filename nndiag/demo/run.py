"""``nndiag demo``: train a small model with an injected fault and show what nndiag recorded.

The fault: the first hidden layer's biases start at -4 (a classic way to get dead ReLUs),
so most of its units never activate and receive no gradient. Everything is synthetic
and runs on CPU in seconds.

Example (slow, so skipped in doctests)::

    from nndiag.demo.run import run_demo
    run_demo("runs/demo", epochs=3)
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from nndiag.advisor import by_severity
from nndiag.demo.models import blobs, mlp
from nndiag.summary import ACTIVATION_STATS, PARAMETER_STATS, layer_summary, render_text, run_overview


def _lightning() -> Any:
    try:
        return importlib.import_module("lightning.pytorch")
    except ImportError:  # pragma: no cover - the other package
        return importlib.import_module("pytorch_lightning")


def build_module(lr: float = 0.05) -> Any:
    """A LightningModule around :func:`nndiag.demo.models.mlp` with the dead-ReLU fault injected."""
    L = _lightning()

    class DemoClassifier(L.LightningModule):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(20, 4, hidden=64, depth=3)
            first = self.net[0]
            assert isinstance(first, nn.Linear)
            with torch.no_grad():
                first.bias.fill_(-4.0)  # the injected fault: most first-layer ReLUs start dead

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    return DemoClassifier()


def run_demo(out: str | Path = "runs/demo", epochs: int = 3, quiet: bool = False) -> dict[str, Any]:
    """Train the demo, print a report of what was recorded, return the run's log dir and summary."""
    L = _lightning()
    from nndiag import DiagnosticsCallback

    x, y = blobs(n=2048, features=20, classes=4, seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    cb = DiagnosticsCallback()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            max_epochs=epochs,
            callbacks=[cb],
            logger=L.loggers.TensorBoardLogger(str(out), name="demo"),
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        trainer.fit(build_module(), loader)
    history = cb.history
    summary = layer_summary(history, cb.session.facts if cb.session else None)
    overview = run_overview(history)
    if not quiet:
        print(render_report(cb.log_dir, overview, summary, cb.diagnoses))
    return {"log_dir": cb.log_dir, "overview": overview, "summary": summary, "history": history}


def _report_line(log_dir: str | None) -> str:
    html = Path(log_dir) / "nndiag-report.html" if log_dir else None
    if html is not None and html.is_file():
        return f"Report: {html}"
    return f"Report: off for this run (NNDIAG_REPORT=0); write it with: nndiag report {log_dir}"


def render_report(log_dir: str | None, overview: dict[str, Any], summary: pd.DataFrame, diagnoses: list[Any]) -> str:
    """The demo's printed report."""
    lines = [
        "nndiag demo: a 3-hidden-layer ReLU MLP on synthetic blobs; fault injected: first-layer biases start at -4.",
        f"Recorded {overview['optimizer_steps']} optimizer steps ({overview['logging_steps']} logging steps) "
        f"of {overview['layers']} layers; loss {overview['loss_first']:.3f} -> {overview['loss_last']:.3f}.",
        "",
        "Activations (first -> last logging step):",
        render_text(summary, ACTIVATION_STATS),
        "",
        "Parameters (first -> last logging step):",
        render_text(summary, PARAMETER_STATS),
        "",
    ]
    if diagnoses:
        lines.append("Diagnoses (most severe first):")
        for d in by_severity(diagnoses):
            lines.append(f"  {d.one_line()}")
            if d.suggestions:
                lines.append(f"      try first: {d.suggestions[0]}")
    else:
        lines.append("Diagnoses: none (the advisors did not flag the injected fault: please report this).")
    lines += [
        "",
        f"Run store: {log_dir}/nndiag.sqlite  (nndiag show {log_dir})",
        _report_line(log_dir),
        f"TensorBoard: tensorboard --logdir {Path(log_dir).parent if log_dir else 'runs'}"
        "  (tags nndiag/<stat>/<layer>)",
    ]
    return "\n".join(lines)
