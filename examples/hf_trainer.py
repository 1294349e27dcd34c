"""nndiag in a Hugging Face ``Trainer``: add ``NndiagCallback`` to ``callbacks`` (``pip install nndiag[transformers]``).

A tiny BERT (built from a config: nothing is downloaded) learns a synthetic task: the label of a
sequence of token ids is whether token 7 occurs in it. Gradient accumulation (2 micro-batches per
optimizer step), an evaluation every 10 steps (its ``eval_loss`` feeds the overfitting rules), and
``halt_on`` stops training cleanly on a NaN loss. Run:
    python examples/hf_trainer.py [--out runs/hf] [--steps 60] [--lr 3e-3]
Try a far too high learning rate (``--lr 30``) and compare what nndiag records and names.
"""

from __future__ import annotations

import argparse

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from nndiag import load_run
from nndiag.integrations.transformers import NndiagCallback

VOCAB, SEQ = 64, 16


class ContainsToken(torch.utils.data.Dataset):
    """Token ids made here (no tokenizer); label 1 when token 7 occurs in the sequence."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(8, VOCAB, (n, SEQ), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        where = torch.randint(0, SEQ, (n,), generator=g)
        self.ids[self.labels == 1, where[self.labels == 1]] = 7

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": self.labels[i]}


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/hf")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    nndiag_cb = NndiagCallback(halt_on="nonfinite_loss")  # defaults need no argument
    training = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=2,
        learning_rate=args.lr,
        eval_strategy="steps",
        eval_steps=10,
        logging_steps=10,
        save_strategy="no",
        report_to=[],  # nndiag writes its own TensorBoard files into the run directory
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=ContainsToken(1024, seed=0),
        eval_dataset=ContainsToken(128, seed=1),
        callbacks=[nndiag_cb],
    )
    trainer.train()

    run = load_run(nndiag_cb.log_dir)
    loss = run.history[run.history.stat == "loss"].sort_values("step")
    steps = trainer.state.global_step
    print(f"{len(loss)} optimizer steps recorded into {nndiag_cb.log_dir} (the Trainer counted {steps})")
    print(f"loss {loss.value.iloc[0]:.3f} -> {loss.value.iloc[-1]:.3f}")
    for d in nndiag_cb.diagnoses:
        print(f"[{d.severity}] {d.code} {d.layer or ''}: {d.message}")
    if nndiag_cb.stop_reason:
        print(nndiag_cb.stop_reason)
    return str(nndiag_cb.log_dir)


if __name__ == "__main__":
    main()
