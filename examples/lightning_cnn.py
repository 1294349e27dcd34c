"""Attach nndiag to an existing Lightning training run: one extra line (the callback).

A small CNN with BatchNorm on synthetic images. Run:
    python examples/lightning_cnn.py [--out runs] [--epochs 2]
then: tensorboard --logdir runs    (nndiag's tags are under nndiag/)
      nndiag show <printed log dir>
Works the same with ``import pytorch_lightning as L``.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as L
import torch
from torch import nn

from nndiag import DiagnosticsCallback, load_run
from nndiag.demo.models import cnn_bn, images


class CNNClassifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = cnn_bn(classes=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args(argv)
    x, y = images(n=512, classes=4, seed=0)
    xv, yv = images(n=128, classes=4, seed=1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xv, yv), batch_size=64)

    cb = DiagnosticsCallback()  # <- the one line nndiag needs
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=[cb],
        logger=L.loggers.TensorBoardLogger(args.out, name="lightning_cnn"),
        enable_progress_bar=False,
    )
    trainer.fit(CNNClassifier(), train, val)

    history, diagnoses = load_run(cb.log_dir)  # the same data, read back from the run store
    relu = history[(history.stat == "dead_frac") & (history.layer == "net.2")]
    print(f"recorded {history.step.max() + 1} optimizer steps into {cb.log_dir}")
    print(f"first ReLU dead fraction: {relu.value.iloc[0]:.2f} -> {relu.value.iloc[-1]:.2f}")
    print(f"diagnoses: {len(diagnoses)}")
    return str(cb.log_dir)


if __name__ == "__main__":
    main()
