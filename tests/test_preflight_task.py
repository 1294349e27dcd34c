"""Preflight runs the task checks that need no training (output activation, loss, target scale) on its batch."""

from __future__ import annotations

import torch
from torch import nn

import nndiag


def mlp(out_act: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)]
    return nn.Sequential(*layers, *([out_act] if out_act is not None else []))


def codes(report: nndiag.PreflightReport) -> dict[str, str]:
    return {d.code: d.severity for d in report.diagnoses}


def test_sigmoid_output_on_unscaled_regression_targets_is_named_before_training() -> None:
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True) * 10 + 50
    found = codes(nndiag.preflight(mlp(nn.Sigmoid()), (x, y), nn.MSELoss(), overfit=False))
    assert found.get("output_activation_mismatch") == "error"
    assert found.get("target_not_normalized") == "warning"


def test_broadcast_shapes_are_named_before_training() -> None:
    x = torch.randn(64, 4)
    y = x.sum(1)  # [N] against the model's [N, 1]

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((out - target) ** 2).mean()  # broadcasts to [N, N]

    found = codes(nndiag.preflight(mlp(), (x, y), loss_fn, overfit=False))
    assert found.get("loss_mismatch") == "error"


def test_healthy_regression_and_classification_batches_stay_quiet() -> None:
    x = torch.randn(64, 4)
    y = (x.sum(1, keepdim=True) - 0.1) / 2.0
    task_codes = {"output_activation_mismatch", "loss_mismatch", "target_not_normalized"}
    assert not set(codes(nndiag.preflight(mlp(), (x, y), nn.MSELoss(), overfit=False))) & task_codes
    labels = (x[:, 0] > 0).float().unsqueeze(1)
    found = codes(nndiag.preflight(mlp(nn.Sigmoid()), (x, labels), nn.BCELoss(), overfit=False))
    assert not set(found) & task_codes
