"""A Hugging Face model in a plain loop: the task is seen through ``labels=`` and a healthy run stays quiet."""

from __future__ import annotations

import pytest
import torch

import nndiag

transformers = pytest.importorskip("transformers")


def test_tiny_bert_records_its_task_and_raises_no_warning() -> None:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(1)
    with nndiag.Monitor(model, opt, log_dir=None, report=False) as mon:
        for _ in range(60):
            ids = torch.randint(0, 100, (16, 12), generator=gen)
            out = model(input_ids=ids, labels=(ids[:, 0] > 50).long())
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(out.loss)  # no target=: the labels keyword of the forward is seen
    task = mon.session.facts["task"]
    assert task["loss"]["kind"] == "cross_entropy"
    assert task["target"]["looks_like"] == "class_indices" and task["target"]["num_classes"] == 2
    assert task["output"]["shape"] == [16, 2]
    # attention query/key gradients are tiny at initialisation by design: not vanishing gradients
    assert [d.code for d in mon.diagnoses if d.severity != "info"] == []
