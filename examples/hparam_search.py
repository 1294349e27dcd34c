"""Coarse-to-fine search of learning rate and weight decay, with nndiag killing the settings that explode.

The lecture's recipe, automated: sample lr and weight decay at random in log space over a wide
range with short runs (the coarse stage; nndiag's ``DiagnosisPruning`` ends trials whose loss goes
NaN or diverges), let ``nndiag sweep`` read the study and suggest a narrower range (or a wider one
when the best values sit on the border), then search that range with longer runs (the fine stage).
Both stages live in one SQLite file, so several processes or machines could work on them at once
(``optuna.load_study(..., storage=...)`` in each worker). Run:
    python examples/hparam_search.py [--out runs/hpsearch] [--coarse 20] [--fine 10]
then ``nndiag sweep sqlite:///runs/hpsearch/study.db --study fine --html sweep.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna
import torch
from torch import nn

from nndiag import Monitor
from nndiag.demo.models import blobs, mlp
from nndiag.integrations.optuna import DiagnosisPruning
from nndiag.sweep import analyze, from_study, render_text


def make_objective(data, lr_range, wd_range, epochs, log_dir):
    (x, y), (xv, yv) = data

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *lr_range, log=True)
        wd = trial.suggest_float("weight_decay", *wd_range, log=True)
        torch.manual_seed(trial.number)
        model = mlp(20, 4, hidden=32, depth=2)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
        # one run store per trial (nndiag sweep can also read the folder); no TensorBoard, no per-run report
        mon = Monitor(model, opt, log_dir=log_dir, hparams=trial.params, tensorboard=False, report=False)
        val = float("nan")
        with DiagnosisPruning(trial, mon) as pruning, mon:
            for epoch in range(epochs):
                for xb, yb in loader:
                    loss = nn.functional.cross_entropy(model(xb), yb)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    mon.step(loss)
                with torch.no_grad():
                    val = nn.functional.cross_entropy(model(xv), yv).item()
                mon.record("val_loss", val)
                pruning.report(val, epoch)  # prunes NaN / diverging / lr-too-high trials
        return val

    return objective


def stage(name, storage, n_trials, objective, seed):
    # random search (the lecture: random beats grid); only nndiag prunes here (no median pruning)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=optuna.pruners.NopPruner(),
    )
    study.optimize(objective, n_trials=n_trials)
    return study


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/hpsearch")
    ap.add_argument("--coarse", type=int, default=20, help="trials of the coarse stage")
    ap.add_argument("--fine", type=int, default=10, help="trials of the fine stage")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per fine trial (coarse trials run 1)")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out.resolve() / 'study.db'}"
    x, y = blobs(n=1024, features=20, classes=4, seed=0)
    x = x + 1.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # overlapping classes
    data = ((x[:768], y[:768]), (x[768:], y[768:]))

    # coarse: a wide log-space range, one short epoch per trial
    coarse = stage(
        "coarse", storage, args.coarse, make_objective(data, (1e-4, 10.0), (1e-7, 1e-1), 1, out / "coarse"), seed=0
    )
    report = analyze(from_study(coarse, storage))
    print(render_text(report))
    advice = {p.name: p for p in report.params}
    lr_range = (advice["lr"].next_low or 1e-4, advice["lr"].next_high or 10.0)
    wd_range = (advice["weight_decay"].next_low or 1e-7, advice["weight_decay"].next_high or 1e-1)
    print(
        f"\nfine stage: lr in [{lr_range[0]:.2g}, {lr_range[1]:.2g}], weight_decay in "
        f"[{wd_range[0]:.2g}, {wd_range[1]:.2g}], {args.epochs} epochs per trial\n"
    )

    # fine: the suggested narrower range, longer runs
    fine = stage(
        "fine", storage, args.fine, make_objective(data, lr_range, wd_range, args.epochs, out / "fine"), seed=1
    )
    print(render_text(analyze(from_study(fine, storage))))
    best = fine.best_trial
    print(
        f"\nbest: val_loss {best.value:.4f} at lr={best.params['lr']:.3g}, "
        f"weight_decay={best.params['weight_decay']:.3g}; study in {storage}"
    )
    return {"storage": storage, "coarse": coarse, "fine": fine, "lr_range": lr_range, "wd_range": wd_range}


if __name__ == "__main__":
    main()
