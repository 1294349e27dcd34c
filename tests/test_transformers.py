"""NndiagCallback under the Hugging Face Trainer: real models built from tiny configs, synthetic data, no downloads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import one_thread  # noqa: F401  (the fixture, used through pytestmark)

from nndiag import load_run

transformers = pytest.importorskip("transformers")
from transformers import Trainer, TrainingArguments  # noqa: E402

from nndiag.integrations.transformers import NndiagCallback  # noqa: E402

SEQ = 16


pytestmark = pytest.mark.usefixtures("one_thread")


class TokenData(torch.utils.data.Dataset):
    """Token ids (and labels) made here: no tokenizer, nothing downloaded."""

    def __init__(self, n: int, vocab: int = 96, classes: int | None = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, SEQ), generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g) if classes else self.ids
        self.mask = torch.ones(SEQ, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask, "labels": self.labels[i]}


class ImageData(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int = 16, classes: int = 4) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def bert(num_labels: int = 3):
    cfg = transformers.BertConfig(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=96, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


def vit():
    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=4,
    )
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(cfg)


def arguments(out: Path, **kw) -> TrainingArguments:
    base = {
        "output_dir": str(out),
        "per_device_train_batch_size": 8,
        "max_steps": 6,
        "logging_steps": 1,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "learning_rate": 1e-3,
        "dataloader_num_workers": 0,
        "seed": 0,
    }
    return TrainingArguments(**{**base, **kw})


class MicroLosses(transformers.TrainerCallback):
    """Ground truth for the test: the model's own ModelOutput.loss of every training micro-batch."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.handle = None

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if module.training:
            self.losses.append(float(output.loss))

    def on_train_end(self, args, state, control, **kw):
        self.handle.remove()


def logged_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def recorded_losses(cb) -> list[float]:
    h = cb.history
    return h[h.stat == "loss"].sort_values("step").value.tolist()


def test_bert_sequence_classification_with_accumulation(tmp_path):
    model = bert()
    cb, truth = NndiagCallback(schedule=1, report=True), MicroLosses()
    trainer = Trainer(
        model=model,
        args=arguments(tmp_path, gradient_accumulation_steps=2),
        train_dataset=TokenData(96),
        callbacks=[cb, truth],
    )
    trainer.train()
    assert trainer.state.global_step == 6
    h = cb.history
    assert sorted(h[h.stat == "loss"].step) == list(range(6))  # optimizer steps, 0-based: 12 micro-batches
    # the recorded loss of a step is the one the Trainer optimises and logs: its micro-batches' model losses,
    # summed when the Trainer takes them as already scaled for accumulation (a model whose forward takes
    # **kwargs is given num_items_in_batch), else averaged
    pairs = list(zip(truth.losses[::2], truth.losses[1::2], strict=True))
    scaled = trainer.model_accepts_loss_kwargs
    expected = [(a + b) if scaled else (a + b) / 2 for a, b in pairs]
    assert recorded_losses(cb) == pytest.approx(expected, rel=1e-5)
    assert recorded_losses(cb) == pytest.approx(logged_losses(trainer), rel=1e-5, abs=1e-4)  # 4.x logs 4 digits
    # the model the Trainer built, under its own names: embeddings, attention, classifier
    layers = set(h[h.stat == "act_std"].layer)
    assert {"bert.embeddings.word_embeddings", "bert.encoder.layer.1.attention.self.query", "classifier"} <= layers
    ratios = h[h.stat == "update_ratio"]
    measured = ratios.dropna()  # NaN where the weights were all zero before the step (zero-initialised biases)
    assert set(measured.step) == set(range(6)) and (measured.value > 0).all() and len(measured) > len(ratios) / 2
    # lr as the scheduler set it for each step (linear decay from 1e-3)
    lrs = h[h.stat == "lr"].sort_values("step").value.tolist()
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True)
    # run directory: the Trainer's TensorBoard default under output_dir, store + event file, hparams
    log_dir = Path(cb.log_dir)
    assert log_dir.parent == tmp_path / "runs"
    run = load_run(log_dir)
    assert run.meta["framework"] == "transformers" and run.meta["status"] == "finished"
    assert run.meta["hparams"]["gradient_accumulation_steps"] == 2
    assert run.meta["hparams"]["learning_rate"] == pytest.approx(1e-3)
    assert run.facts["model_class"] == "BertForSequenceClassification"
    assert list(log_dir.glob("events.out.tfevents.*"))
    assert (log_dir / "nndiag-report.html").is_file()  # the report, written at the end of training
    assert not list(log_dir.glob("*-wal")) and not list(log_dir.glob("*-shm"))
    # nothing left behind: no hook on the model, the Trainer's training_step is its own again
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert "training_step" not in trainer.__dict__
    assert {d.code for d in cb.diagnoses} <= {"vanishing_gradients", "initial_loss_off", "loss_not_decreasing"}


def test_gpt2_language_model_and_eval_loss(tmp_path):
    cb, truth = NndiagCallback(schedule=2), MicroLosses()
    trainer = Trainer(
        model=gpt2(),
        args=arguments(tmp_path, max_steps=8, eval_strategy="steps", eval_steps=4, per_device_eval_batch_size=8),
        train_dataset=TokenData(64, classes=None),
        eval_dataset=TokenData(16, classes=None, seed=1),
        callbacks=[cb, truth],
    )
    trainer.train()
    h = cb.history
    assert trainer.state.global_step == 8 and sorted(h[h.stat == "loss"].step) == list(range(8))
    assert recorded_losses(cb) == pytest.approx(logged_losses(trainer), rel=1e-5, abs=1e-4)  # 4.x logs 4 digits
    assert recorded_losses(cb) == pytest.approx(truth.losses, rel=1e-5)  # the model's own loss (no accumulation)
    assert recorded_losses(cb)[0] == pytest.approx(math.log(96), rel=0.1)  # untrained LM: about ln(vocab)
    assert set(h[h.stat == "act_std"].step) == {0, 2, 4, 6}  # schedule=2
    assert "transformer.h.0.attn.c_attn" in set(h.layer)
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    val = h[h.stat == "val_loss"].sort_values("step")
    assert val.step.tolist() == [3, 7]  # recorded at the last completed step (global_step 4 and 8)
    assert val.value.tolist() == pytest.approx(evals)


def test_vit_image_classification(tmp_path):
    cb, truth = NndiagCallback(schedule=1, preflight=True), MicroLosses()
    trainer = Trainer(
        model=vit(), args=arguments(tmp_path, max_steps=4), train_dataset=ImageData(32), callbacks=[cb, truth]
    )
    trainer.train()
    h = cb.history
    assert sorted(h[h.stat == "loss"].step) == list(range(4)) == list(range(trainer.state.global_step))
    assert recorded_losses(cb) == pytest.approx(logged_losses(trainer), rel=1e-5, abs=1e-4)  # 4.x logs 4 digits
    assert recorded_losses(cb) == pytest.approx(truth.losses, rel=1e-5)
    inp = h[(h.layer == "input") & (h.stat == "act_std")]
    assert inp.value.tolist() == pytest.approx([1.0] * 4, abs=0.05)  # pixel_values ~ N(0, 1): the image input
    assert "vit.embeddings.patch_embeddings.projection" in set(h[h.stat == "act_std"].layer)
    # preflight ran on the first batch, as model(pixel_values), and did not become a training step
    report = cb.preflight_report
    assert report is not None and "vit.embeddings.patch_embeddings.projection" in set(report.table.layer)
    assert len(truth.losses) == 4


def test_learning_rate_far_too_high_is_named_and_halts(tmp_path):
    cb = NndiagCallback(schedule=1, halt_on=("nonfinite_loss", "loss_diverging", "lr_too_high"))
    trainer = Trainer(
        model=bert(),
        args=arguments(tmp_path, max_steps=40, learning_rate=50.0, optim="sgd", max_grad_norm=0.0),
        train_dataset=TokenData(320),
        callbacks=[cb],
    )
    trainer.train()
    codes = {d.code for d in cb.diagnoses}
    assert codes & {"lr_too_high", "loss_diverging", "nonfinite_loss"}, codes
    assert cb.stop_reason is not None and trainer.state.global_step < 40  # stopped through control
    h = cb.history
    assert h[h.stat == "loss"].step.max() + 1 == trainer.state.global_step
    if "nonfinite_loss" in codes:  # the real loss is recorded, not the Trainer's NaN filter's stand-in
        assert not all(math.isfinite(v) for v in recorded_losses(cb))


def test_nan_loss_is_recorded_though_the_trainer_filters_it(tmp_path):
    model = bert()
    cb = NndiagCallback(schedule=1)

    class PoisonAt3(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                with torch.no_grad():
                    model.classifier.weight.fill_(float("nan"))

    trainer = Trainer(
        model=model, args=arguments(tmp_path, max_steps=5), train_dataset=TokenData(64), callbacks=[cb, PoisonAt3()]
    )
    trainer.train()
    losses = recorded_losses(cb)
    assert all(math.isfinite(v) for v in losses[:3]) and all(math.isnan(v) for v in losses[3:])
    assert all(math.isfinite(v) for v in logged_losses(trainer))  # logging_nan_inf_filter hid them
    assert "nonfinite_loss" in {d.code for d in cb.diagnoses}
    # TensorBoard: the diagnoses text is written again at the end, at the last step, with the final steps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(cb.log_dir, size_guidance={"tensors": 0})
    acc.Reload()
    texts = acc.Tensors("nndiag/diagnoses/text_summary")
    assert texts[-1].step == 4
    final = texts[-1].tensor_proto.string_val[0].decode()
    assert "| nonfinite\\_loss |  | 3-4 | open |" in final


class CustomLossTrainer(Trainer):
    """A user-supplied compute_loss (label smoothing): the model returns no loss of its own."""

    seen: list[float]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels, label_smoothing=0.2)
        if model.training:
            self.seen.append(float(loss))
        return (loss, outputs) if return_outputs else loss


def test_custom_compute_loss_is_recorded(tmp_path):
    cb = NndiagCallback(schedule=1)
    trainer = CustomLossTrainer(
        model=bert(), args=arguments(tmp_path, max_steps=4), train_dataset=TokenData(64), callbacks=[cb]
    )
    trainer.seen = []
    trainer.train()
    assert recorded_losses(cb) == pytest.approx(trainer.seen, rel=1e-5)
    assert recorded_losses(cb) == pytest.approx(logged_losses(trainer), rel=1e-5, abs=1e-4)


def test_without_the_trainer_the_model_output_loss_is_recorded(tmp_path, monkeypatch):
    from nndiag.integrations import hf_run

    monkeypatch.setattr(hf_run, "find_trainer", lambda: None)  # fallback: a forward hook on the model
    model = bert()
    cb, truth = NndiagCallback(schedule=1), MicroLosses()
    Trainer(
        model=model, args=arguments(tmp_path, max_steps=4), train_dataset=TokenData(64), callbacks=[cb, truth]
    ).train()
    assert recorded_losses(cb) == pytest.approx(truth.losses, rel=1e-5)
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("restore_callbacks", [False, True], ids=["default", "restore_callback_states"])
def test_resume_from_checkpoint_continues_the_run(tmp_path, restore_callbacks):
    data = TokenData(96)
    args = {"max_steps": 8, "save_strategy": "steps", "save_steps": 4, "seed": 0}
    first = NndiagCallback(schedule=1, halt_on="nonfinite_loss")
    Trainer(model=bert(), args=arguments(tmp_path, **args), train_dataset=data, callbacks=[first]).train()
    full = recorded_losses(first)
    checkpoint = tmp_path / "checkpoint-4"
    saved = transformers.TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    assert saved.stateful_callbacks["NndiagCallback"]["attributes"]["nndiag_resume"]["step"] == 4

    second = NndiagCallback(schedule=1, halt_on="nonfinite_loss")
    trainer = Trainer(
        model=bert(),
        args=arguments(tmp_path, restore_callback_states_from_checkpoint=restore_callbacks, **args),
        train_dataset=data,
        callbacks=[second],
    )
    trainer.train(resume_from_checkpoint=str(checkpoint))
    used = next(c for c in trainer.callback_handler.callbacks if isinstance(c, NndiagCallback))
    if restore_callbacks:  # the Trainer rebuilt the callback from the saved options and state
        assert used is not second and used.halt_on == ("nonfinite_loss",) and used.schedule == 1
    else:
        assert used is second
    assert used.log_dir == first.log_dir  # the same run continues
    h = load_run(used.log_dir).history
    loss = h[h.stat == "loss"].sort_values("step")
    assert loss.step.tolist() == list(range(8))  # steps 4-7 were redone, not appended twice
    assert loss.value.tolist() == pytest.approx(full, rel=1e-4)  # same data order and weights after resume
    assert used.session.step == trainer.state.global_step == 8


def test_lightning_callback_in_hf_trainer_names_the_right_class(tmp_path):
    from nndiag import DiagnosticsCallback

    with pytest.raises(TypeError, match=r"nndiag\.integrations\.transformers\.NndiagCallback") as info:
        Trainer(model=bert(), args=arguments(tmp_path), train_dataset=TokenData(16), callbacks=[DiagnosticsCallback()])
    assert "\n" not in str(info.value)
    trainer = Trainer(model=bert(), args=arguments(tmp_path), train_dataset=TokenData(16))
    trainer.add_callback(DiagnosticsCallback())  # added after construction: the first event is on_train_begin
    with pytest.raises(TypeError, match=r"nndiag\.integrations\.transformers\.NndiagCallback"):
        trainer.train()


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_hf_callback_in_lightning_trainer_names_the_right_class(tmp_path, package):
    pytest.importorskip(package)
    from helpers import loader, make_module, make_trainer

    trainer = make_trainer(package, tmp_path, [NndiagCallback()], max_steps=1)
    module, data = make_module(package, torch.nn.Linear(4, 2)), loader(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    with pytest.raises(TypeError, match=r"nndiag\.DiagnosticsCallback") as info:
        trainer.fit(module, data)
    assert "\n" not in str(info.value)  # one line


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch.distributed without gloo")
@pytest.mark.timeout(300)
def test_two_processes_torchrun_only_main_writes(tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = Path(__file__).parent / "dist" / "hf_train.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "NNDIAG_REPORT": "0", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTEST_CURRENT_TEST", None)
    proc = subprocess.run([*cmd, "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["log_dir"] is not None and ranks[1]["log_dir"] is None
    assert len(list(tmp_path.rglob("nndiag.sqlite"))) == 1  # only the main process wrote
    assert all(r["steps"] == r["global_step"] == 6 for r in ranks)  # every rank counted the same steps
    # rank 0 records the loss of the global batch: the mean over the ranks, as the Trainer logs it
    assert ranks[0]["recorded"] == pytest.approx(ranks[0]["logged"], rel=1e-5, abs=1e-4)
    assert load_run(ranks[0]["log_dir"]).meta["world_size"] == 2
    assert ranks[0]["hooks_left"] == ranks[1]["hooks_left"] == 0
