"""nndiag.preflight: the lecture's activation tables, forward-pass diagnoses, overfit check, no side effects."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import nndiag
from nndiag.preflight import OverfitConfig, PreflightReport, check_overfit

# The lecture's table: 10 tanh layers of 500 units, W = 0.01 * randn, input 1000 x 500 standard normal.
LECTURE_STDS = [0.213, 0.0476, 0.0106, 0.00238, 0.000532]


def stack(activation: type[nn.Module], std: float | None, depth: int = 10, width: int = 500) -> nn.Sequential:
    """``depth`` x (Linear without bias, activation); weights ~ std * randn (PyTorch's default init when None)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        lin = nn.Linear(width, width, bias=False)
        if std is not None:
            nn.init.normal_(lin.weight, std=std)
        layers += [lin, activation()]
    return nn.Sequential(*layers)


def act_stds(report: PreflightReport, kind: str) -> list[float]:
    return report.table[report.table.kind == kind]["std"].tolist()


def problems(report: PreflightReport) -> list[str]:
    return [d.code for d in report.diagnoses if d.severity in ("warning", "error")]


@pytest.fixture(scope="module")
def lecture_input() -> torch.Tensor:
    return torch.randn(1000, 500, generator=torch.Generator().manual_seed(0))


# -- the lecture's tables -------------------------------------------------------------------------------------


def test_lecture_table_small_init_collapses(lecture_input):
    torch.manual_seed(0)
    report = nndiag.preflight(stack(nn.Tanh, 0.01), lecture_input)
    stds = act_stds(report, "Tanh")
    assert len(stds) == 10
    for got, want in zip(stds[:5], LECTURE_STDS, strict=True):
        assert got == pytest.approx(want, rel=0.10)
    assert all(abs(m) < 0.01 for m in report.table["mean"])  # the lecture: means ~ 0
    codes = [d.code for d in report.diagnoses]
    assert "activation_collapse" in codes
    assert "poor_init_scale" in codes
    assert not report.ok


@pytest.mark.parametrize(
    ("activation", "gain"),
    [
        pytest.param(nn.Tanh, 1.0, id="xavier_tanh"),
        pytest.param(nn.ReLU, 2.0, id="he_relu"),
    ],
)
def test_well_scaled_stacks_keep_their_std_and_raise_nothing(lecture_input, activation, gain):
    torch.manual_seed(0)
    report = nndiag.preflight(stack(activation, math.sqrt(gain / 500)), lecture_input)
    stds = act_stds(report, activation.__name__)
    assert len(stds) == 10
    # every layer within a factor 2 of the one before: no geometric collapse or growth
    assert all(0.5 < b / a < 2.0 for a, b in itertools.pairwise(stds))
    # over all 10 layers: He-ReLU stays flat; Xavier-tanh drifts down slowly (the lecture's own Xavier table
    # goes 0.627 -> 0.220, a factor 2.85), far from the small-init collapse (a factor 1e5 by layer 10)
    assert max(stds) / min(stds) < (2.0 if activation is nn.ReLU else 3.5)
    assert problems(report) == []
    assert report.ok


def test_xavier_relu_stack_halves_the_variance_per_layer(lecture_input):
    torch.manual_seed(0)
    report = nndiag.preflight(stack(nn.ReLU, math.sqrt(1 / 500)), lecture_input)
    stds = act_stds(report, "ReLU")
    ratios = [b / a for a, b in itertools.pairwise(stds)]
    assert all(0.6 < r < 0.8 for r in ratios)  # std x 1/sqrt(2) per layer: the variance halves
    assert stds[-1] / stds[0] < 0.1


def test_xavier_relu_stack_is_flagged(lecture_input):
    torch.manual_seed(0)
    report = nndiag.preflight(stack(nn.ReLU, math.sqrt(1 / 500)), lecture_input)
    assert {"activation_collapse", "poor_init_scale"} & {d.code for d in report.diagnoses}


def test_large_init_saturates_tanh(lecture_input):
    torch.manual_seed(0)
    report = nndiag.preflight(stack(nn.Tanh, 1.0), lecture_input)
    assert all(s > 0.9 for s in report.table[report.table.kind == "Tanh"]["sat_frac"])
    assert "saturated_activations" in [d.code for d in report.diagnoses]


# -- one fault each, with its healthy counterpart ---------------------------------------------------------------


def mlp(activation: type[nn.Module] = nn.ReLU, classes: int = 5) -> nn.Sequential:
    return nn.Sequential(nn.Linear(20, 64), activation(), nn.Linear(64, 64), activation(), nn.Linear(64, classes))


def data(n: int = 256, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 20, generator=g), torch.randint(0, classes, (n,), generator=g)


def sigmoid_hidden(healthy: bool) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    return mlp(nn.ReLU if healthy else nn.Sigmoid), data()


def dead_relu(healthy: bool) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    model = mlp()
    nn.init.constant_(model[0].bias, 0.0 if healthy else -4.0)
    return model, data()


def symmetric(healthy: bool) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    model = mlp()
    if not healthy:
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.constant_(m.weight, 0.05)
    return model, data()


def unnormalised(healthy: bool) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    x, y = data()
    return mlp(), (x if healthy else x * 100 + 50, y)


def huge_logits(healthy: bool) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    model = mlp()
    if not healthy:
        with torch.no_grad():
            model[-1].weight.mul_(100.0)
    return model, data()


FAULTS = [
    pytest.param(sigmoid_hidden, "sigmoid_hidden_layer", id="sigmoid_hidden_layer"),
    pytest.param(dead_relu, "dead_units", id="dead_relu_negative_bias"),
    pytest.param(symmetric, "symmetric_init", id="symmetric_constant_weights"),
    pytest.param(unnormalised, "input_not_normalized", id="input_x100_plus_50"),
    pytest.param(huge_logits, "initial_loss_off", id="initial_loss_huge_logits"),
]


@pytest.mark.parametrize(("make", "code"), FAULTS)
def test_fault_is_flagged(make, code):
    torch.manual_seed(0)
    model, batch = make(healthy=False)
    report = nndiag.preflight(model, batch, nn.CrossEntropyLoss(), overfit=False)
    assert code in [d.code for d in report.diagnoses]


@pytest.mark.parametrize(("make", "code"), FAULTS)
def test_healthy_counterpart_is_clean(make, code):
    torch.manual_seed(0)
    model, batch = make(healthy=True)
    report = nndiag.preflight(model, batch, nn.CrossEntropyLoss(), overfit=False)
    assert [d.code for d in report.diagnoses] == []
    assert report.initial_loss == pytest.approx(math.log(5), rel=0.2)
    assert report.num_classes == 5


def test_initial_loss_needs_targets_and_reports_ln_c():
    torch.manual_seed(0)
    model, (x, y) = huge_logits(healthy=False)
    without = nndiag.preflight(model, x, nn.CrossEntropyLoss(), overfit=False)
    assert without.initial_loss is None and "initial_loss_off" not in [d.code for d in without.diagnoses]
    assert any("loss_fn" in n for n in without.notes)
    declared = nndiag.preflight(model, {"inputs": x, "labels": y}, nn.CrossEntropyLoss(), 5, overfit=False)
    off = next(d for d in declared.diagnoses if d.code == "initial_loss_off")
    assert off.evidence["expected_loss"] == pytest.approx(math.log(5))
    assert declared.expected_loss == pytest.approx(math.log(5))


# -- no side effects --------------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def hook_counts(model: nn.Module) -> list[tuple[int, ...]]:
    return [
        (
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(m._backward_hooks),
            len(m._backward_pre_hooks),
            len(m._state_dict_hooks),
        )
        for m in model.modules()
    ]


@pytest.mark.parametrize("mode", [pytest.param("train", id="train_mode"), pytest.param("mixed", id="mixed_modes")])
def test_preflight_leaves_model_rng_and_cwd_untouched(mode, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = Net()
    if mode == "mixed":
        model.body[1].eval()  # a frozen BatchNorm inside a training model
    user_calls: list[int] = []
    model.head.register_forward_hook(lambda *a: user_calls.append(1))
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_modes = [m.training for m in model.modules()]
    before_hooks = hook_counts(model)
    rng = torch.get_rng_state()
    x, y = data(64)
    report = nndiag.preflight(model, (x, y), nn.CrossEntropyLoss(), overfit=OverfitConfig(steps=30))
    assert report.overfit is not None and report.overfit.steps > 0
    after = model.state_dict()
    assert before_state.keys() == after.keys()
    assert all(torch.equal(before_state[k], after[k]) for k in after)  # weights and BatchNorm buffers
    assert [m.training for m in model.modules()] == before_modes
    assert hook_counts(model) == before_hooks
    assert torch.equal(torch.get_rng_state(), rng)
    assert list(tmp_path.iterdir()) == []
    assert all(p.grad is None for p in model.parameters())


def test_table_matches_a_plain_forward_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))
    x, _ = data()
    report = nndiag.preflight(model, x)
    assert report.table.columns.tolist() == ["layer", "kind", "mean", "std", "dead_frac", "sat_frac"]
    assert report.table.layer.tolist() == ["0", "1", "2", "3", "4"]
    h = x
    for i, module in enumerate(model):  # brute force: a plain loop over the layers
        h = module(h).detach()
        row = report.table.iloc[i]
        assert row["mean"] == pytest.approx(float(h.mean()), abs=1e-5)
        assert row["std"] == pytest.approx(float(h.std(correction=0)), rel=1e-4)
    assert report.table.iloc[1]["sat_frac"] == pytest.approx(
        float((model[1](model[0](x)).abs() >= 0.99).float().mean())
    )
    assert report.table.iloc[3]["dead_frac"] == pytest.approx(0.0)
    assert math.isnan(report.table.iloc[0]["dead_frac"]) or report.table.iloc[0]["dead_frac"] >= 0
    assert report.input_mean == pytest.approx(float(x.mean()), abs=1e-5)


# -- overfit one batch ------------------------------------------------------------------------------------------


class IgnoresInput(nn.Module):
    """A bug: the forward pass feeds zeros instead of the input (e.g. a mis-applied mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.zeros_like(x))


def frozen_model() -> nn.Module:
    model = mlp()
    model.requires_grad_(False)
    return model


def test_overfit_passes_on_a_learnable_model():
    torch.manual_seed(0)
    x, y = data(64)
    result = check_overfit(mlp(), x, y, nn.CrossEntropyLoss(), OverfitConfig(), classification=True)
    assert result.passed, result.message
    assert result.samples == 16
    assert result.final_loss < 0.1 and result.final_loss <= 0.1 * result.initial_loss
    assert 0 < result.steps <= 500 and len(result.losses) == result.steps + 1
    assert "can fit 16 samples" in result.message


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        pytest.param(IgnoresInput, "cannot fit", id="output_ignores_input"),
        pytest.param(frozen_model, "no trainable parameter", id="all_parameters_frozen"),
    ],
)
def test_overfit_fails_on_an_unlearnable_model(make, phrase):
    torch.manual_seed(0)
    x, y = data(64)
    report = nndiag.preflight(make(), (x, y), nn.CrossEntropyLoss(), overfit=OverfitConfig(steps=150))
    assert report.overfit is not None
    assert not report.overfit.passed
    assert phrase in report.overfit.message
    assert not report.ok and report.fails("error")
    assert "FAILED" in str(report)


def test_overfit_is_bounded_in_steps_and_time():
    torch.manual_seed(0)
    x, y = data(64)
    by_steps = check_overfit(IgnoresInput(), x, y, nn.CrossEntropyLoss(), OverfitConfig(steps=7))
    assert by_steps.steps == 7 and not by_steps.passed
    by_time = check_overfit(IgnoresInput(), x, y, nn.CrossEntropyLoss(), OverfitConfig(max_seconds=1e-9))
    assert by_time.steps <= 1 and by_time.seconds < 1.0
    assert "ran out of time" in by_time.message


def test_overfit_regression_uses_the_relative_target():
    torch.manual_seed(0)
    x = torch.randn(64, 20)
    y = torch.randn(64, 3)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    report = nndiag.preflight(model, (x, y), nn.MSELoss())
    assert report.num_classes is None and report.overfit is not None
    assert report.overfit.passed, report.overfit.message
    assert report.overfit.final_loss <= 0.1 * report.overfit.initial_loss


# -- input handling and output ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([], id="empty_list"),
        pytest.param({"pixels": torch.zeros(4, 20)}, id="dict_without_input_key"),
        pytest.param("x", id="string"),
    ],
)
def test_bad_batches_raise_value_errors_that_say_what_to_do(bad):
    with pytest.raises(ValueError, match=r"pass|rename"):
        nndiag.preflight(mlp(), bad)


def test_forward_failure_is_a_value_error():
    with pytest.raises(ValueError, match="forward pass failed"):
        nndiag.preflight(mlp(), torch.zeros(8, 7))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        nndiag.preflight("model", torch.zeros(8, 20))  # type: ignore[arg-type]


def test_report_text_html_and_dict():
    import json

    torch.manual_seed(0)
    model = mlp(nn.Sigmoid)
    report = nndiag.preflight(model, data(), nn.CrossEntropyLoss(), overfit=OverfitConfig(steps=5))
    text = str(report)
    assert "layer" in text and "std" in text and "sigmoid_hidden_layer" in text
    assert "initial loss:" in text and "ln 5" in text and "overfit one batch:" in text
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["num_classes"] == 5 and len(payload["table"]) == 5
    assert payload["diagnoses"][0]["code"] == "sigmoid_hidden_layer"
    report.diagnoses[0] = type(report.diagnoses[0])("x", "info", 0, "<script>", "<b>")
    html = report._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
