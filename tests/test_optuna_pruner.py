"""The Optuna pruner: broken trials (exploding lr) are pruned with nndiag's reason, healthy ones complete."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from nndiag import Monitor
from nndiag.integrations.optuna import PRUNE_CODES, DiagnosisPruning

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial, epochs=3, steps=8, recheck=True):
    lr = trial.suggest_float("lr", 1e-4, 1e3, log=True)
    torch.manual_seed(0)
    x = torch.randn(128, 10)
    y = (x[:, :2].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    mon = Monitor(model, opt, log_dir=None, hparams=trial.params, tensorboard=False)
    with DiagnosisPruning(trial, mon, recheck=recheck) as pruning, mon:
        for epoch in range(epochs):
            for _ in range(steps):
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.step(loss)
            pruning.report(loss.item(), epoch)
    return loss.item()


def run(lrs, **kwargs):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    for lr in lrs:
        study.enqueue_trial({"lr": lr})
    study.optimize(lambda t: objective(t, **kwargs), n_trials=len(lrs))
    return study.trials


def test_exploding_trial_is_pruned_with_reason_healthy_completes():
    exploding, healthy = run([300.0, 0.05])
    assert exploding.state == TrialState.PRUNED
    reason = exploding.user_attrs["nndiag_pruned"]
    assert reason.startswith("[error] ") and any(code in reason for code in PRUNE_CODES), reason
    assert set(exploding.user_attrs["nndiag_diagnoses"]) & set(PRUNE_CODES)
    assert exploding.last_step == 0  # ended at the first report, not after all epochs
    assert healthy.state == TrialState.COMPLETE and "nndiag_pruned" not in healthy.user_attrs
    assert not set(healthy.user_attrs["nndiag_diagnoses"]) & set(PRUNE_CODES)
    assert healthy.value < 0.5 and healthy.intermediate_values.keys() == {0, 1, 2}


def test_divergence_within_one_short_epoch_is_caught_by_the_recheck():
    # one report after 8 steps, loss finite but exploding: the background check has not run yet (measured:
    # with recheck=False this trial completes with a value of 7e9); the recheck at the report sees lr_too_high
    (trial,) = run([30.0], epochs=1)
    assert trial.state == TrialState.PRUNED
    assert "nndiag_pruned" in trial.user_attrs


def test_warnings_do_not_prune_and_codes_are_validated():
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(ValueError, match="unknown diagnosis code"):
        DiagnosisPruning(trial, None, codes=("nan_loss",))
    pruning = DiagnosisPruning(trial, None)
    assert pruning.check(float("nan"), 3) == "the reported value is nan at step 3"
    assert pruning.check(1.0, 3) is None
    assert "dead_units" not in PRUNE_CODES and "loss_not_decreasing" not in PRUNE_CODES


def test_lightning_pruning_callback(tmp_path):
    import lightning.pytorch as pl

    from nndiag import DiagnosticsCallback
    from nndiag.integrations.optuna import PruningCallback

    class Module(pl.LightningModule):
        def __init__(self, lr):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, _):
            self.log("val_loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    torch.manual_seed(0)
    x = torch.randn(128, 10)
    data = torch.utils.data.TensorDataset(x, (x[:, :2].sum(1) > 0).long())
    loader = torch.utils.data.DataLoader(data, batch_size=16)

    def lightning_objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1e3, log=True)
        trainer = pl.Trainer(
            max_epochs=3,
            default_root_dir=tmp_path,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[DiagnosticsCallback(tensorboard=False, report=False), PruningCallback(trial)],
        )
        trainer.fit(Module(lr), loader, loader)
        return float(trainer.callback_metrics["val_loss"])

    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    study.enqueue_trial({"lr": 300.0})
    study.enqueue_trial({"lr": 0.05})
    study.optimize(lightning_objective, n_trials=2)
    exploding, healthy = study.trials
    assert exploding.state == TrialState.PRUNED and "nndiag_pruned" in exploding.user_attrs
    assert healthy.state == TrialState.COMPLETE and "nndiag_pruned" not in healthy.user_attrs
    assert "nndiag_diagnoses" in healthy.user_attrs
