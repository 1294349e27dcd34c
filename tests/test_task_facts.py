"""Task facts: the loss kind from the autograd graph, target and output summaries, baselines, shapes.

The loss-kind table holds the graphs observed on torch 2.13 for the losses people write; the
summaries and baselines are checked against brute force (plain loops / the loss itself).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nndiag.collect.task import (
    LossKind,
    baseline_loss,
    loss_kind,
    loss_target,
    output_pack,
    output_summary,
    pick_output,
    shape_mismatch,
    target_summary,
)

torch.manual_seed(0)
N, C = 8, 5
X = torch.randn(N, 4)
Y = torch.randint(0, C, (N,))
LIN = nn.Linear(4, C)


def logits() -> torch.Tensor:
    return LIN(X)


def col() -> torch.Tensor:
    """A one-column output ``[N, 1]``."""
    return LIN(X)[:, :1]


def vec() -> torch.Tensor:
    """A ``[N]`` output."""
    return LIN(X)[:, 0]


R = torch.randn(N)
P = torch.rand(N)

# (id, loss builder, kind, reduction, input_activation, note, hand_written)
LOSSES: list[tuple[str, Callable[[], torch.Tensor], str, str, str | None, str | None, bool | None]] = [
    ("ce", lambda: nn.CrossEntropyLoss()(logits(), Y), "cross_entropy", "mean", "none", None, False),
    ("ce_sum", lambda: F.cross_entropy(logits(), Y, reduction="sum"), "cross_entropy", "sum", "none", None, False),
    (
        "ce_none_mean",
        lambda: F.cross_entropy(logits(), Y, reduction="none").mean(),
        "cross_entropy",
        "mean",
        "none",
        None,
        False,
    ),
    (
        "ce_label_smoothing",
        lambda: nn.CrossEntropyLoss(label_smoothing=0.1)(logits(), Y),
        "cross_entropy",
        "mean",
        "none",
        "label_smoothing",
        False,
    ),
    (
        "ce_prob_targets",
        lambda: F.cross_entropy(logits(), torch.softmax(torch.randn(N, C), 1)),
        "cross_entropy",
        "mean",
        "none",
        "soft_targets",
        None,
    ),
    (
        "ce_after_softmax",
        lambda: F.cross_entropy(torch.softmax(logits(), 1), Y),
        "cross_entropy",
        "mean",
        "softmax",
        "softmax_before_cross_entropy",
        False,
    ),
    (
        "ce_after_sigmoid",
        lambda: F.cross_entropy(torch.sigmoid(logits()), Y),
        "cross_entropy",
        "mean",
        "sigmoid",
        "sigmoid_before_cross_entropy",
        False,
    ),
    (
        "ce_after_log_softmax_module",
        lambda: F.cross_entropy(nn.LogSoftmax(1)(logits()), Y),
        "cross_entropy",
        "mean",
        "none",
        None,
        False,
    ),
    (
        "softmax_over_one_unit",
        lambda: F.cross_entropy(torch.softmax(col(), 1), torch.zeros(N, dtype=torch.long)),
        "cross_entropy",
        "mean",
        "softmax",
        "softmax_before_cross_entropy",
        False,
    ),
    (
        "nll_log_softmax",
        lambda: F.nll_loss(F.log_softmax(logits(), 1), Y),
        "cross_entropy",
        "mean",
        "none",
        None,
        False,
    ),
    (
        "nll_log_of_softmax",
        lambda: F.nll_loss(torch.log(torch.softmax(logits(), 1)), Y),
        "cross_entropy",
        "mean",
        "softmax",
        "log_of_softmax",
        False,
    ),
    (
        "nll_on_softmax",
        lambda: F.nll_loss(torch.softmax(logits(), 1), Y),
        "nll",
        "mean",
        "softmax",
        "nll_without_log",
        False,
    ),
    (
        "lm_view",
        lambda: F.cross_entropy(LIN(torch.randn(2, 4, 4)).view(-1, C), torch.randint(0, C, (8,))),
        "cross_entropy",
        "mean",
        "none",
        None,
        False,
    ),
    (
        "lm_transpose_2d",
        lambda: F.cross_entropy(LIN(torch.randn(2, 4, 4)).transpose(1, 2), torch.randint(0, C, (2, 4))),
        "cross_entropy",
        "mean",
        "none",
        None,
        False,
    ),
    (
        "hf_sum_over_tokens",
        lambda: F.cross_entropy(LIN(torch.randn(2, 4, 4)).float().view(-1, C), Y, reduction="sum") / 8,
        "cross_entropy",
        "mean",
        "none",
        None,
        False,
    ),
    (
        "hand_ce_one_hot",
        lambda: -(F.log_softmax(logits(), 1) * F.one_hot(Y, C)).sum(1).mean(),
        "cross_entropy",
        "mean",
        "none",
        "soft_targets",
        None,
    ),
    (
        "hand_ce_gather",
        lambda: -F.log_softmax(logits(), 1).gather(1, Y[:, None]).mean(),
        "cross_entropy",
        "mean",
        "none",
        None,
        True,
    ),
    ("mse", lambda: nn.MSELoss()(vec(), R), "mse", "mean", "none", None, False),
    ("mse_sum", lambda: F.mse_loss(vec(), R, reduction="sum"), "mse", "sum", "none", None, False),
    ("mse_sigmoid", lambda: F.mse_loss(torch.sigmoid(col()).squeeze(1), R), "mse", "mean", "sigmoid", None, False),
    ("mse_relu", lambda: F.mse_loss(torch.relu(vec()), R), "mse", "mean", "relu", None, False),
    ("mse_tanh", lambda: F.mse_loss(torch.tanh(logits())[:, 0], R), "mse", "mean", "tanh", None, False),
    ("hand_mse", lambda: ((vec() - R) ** 2).mean(), "mse", "mean", "none", None, True),
    ("hand_mse_square_sum", lambda: torch.square(vec() - R).sum(), "mse", "sum", "none", None, True),
    ("hand_mse_product", lambda: ((vec() - R) * (vec() - R)).mean(), "mse", "mean", "none", None, True),
    ("l1", lambda: nn.L1Loss()(vec(), R), "l1", "mean", "none", None, None),
    ("hand_l1", lambda: (vec() - R).abs().mean(), "l1", "mean", "none", None, None),
    ("smooth_l1", lambda: nn.SmoothL1Loss()(vec(), R), "smooth_l1", "mean", "none", None, False),
    ("huber", lambda: nn.HuberLoss(reduction="sum")(vec(), R), "huber", "sum", "none", None, False),
    ("bce", lambda: nn.BCELoss()(torch.sigmoid(vec()), P), "bce", "mean", "sigmoid", None, False),
    ("bce_with_logits", lambda: nn.BCEWithLogitsLoss()(vec(), P), "bce_with_logits", "mean", "none", None, False),
    (
        "bce_with_logits_after_sigmoid",
        lambda: nn.BCEWithLogitsLoss()(torch.sigmoid(vec()), P),
        "bce_with_logits",
        "mean",
        "sigmoid",
        "sigmoid_before_bce_with_logits",
        False,
    ),
    (
        "hand_bce",
        lambda: -(P * torch.log(torch.sigmoid(vec())) + (1 - P) * torch.log(1 - torch.sigmoid(vec()))).mean(),
        "bce",
        "mean",
        "sigmoid",
        None,
        True,
    ),
    ("multi_margin", lambda: F.multi_margin_loss(logits(), Y), "multi_margin", "mean", "none", None, False),
]


@pytest.mark.parametrize(
    ("build", "kind", "reduction", "act", "note", "hand"),
    [pytest.param(*row[1:], id=row[0]) for row in LOSSES],
)
def test_loss_kind_table(
    build: Callable[[], torch.Tensor], kind: str, reduction: str, act: str | None, note: str | None, hand: bool | None
) -> None:
    loss = build()
    before = loss_kind(loss)
    assert (before.kind, before.reduction, before.input_activation, before.note, before.hand_written) == (
        kind,
        reduction,
        act,
        note,
        hand,
    )
    loss.backward()
    assert loss_kind(loss) == before  # names and reductions survive backward()
    json.dumps(asdict(before))  # plain data: no graph reference kept


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: F.kl_div(F.log_softmax(logits(), 1), torch.softmax(torch.randn(N, C), 1)), id="kl_div"),
        pytest.param(lambda: F.cosine_embedding_loss(logits(), logits().detach(), torch.ones(N)), id="cosine"),
        pytest.param(lambda: logits().mean(), id="plain_mean"),
        pytest.param(lambda: (logits() ** 2).mean(), id="activation_penalty"),
        pytest.param(lambda: nn.CrossEntropyLoss()(logits(), Y).detach(), id="detached"),
    ],
)
def test_unknown_losses(build: Callable[[], torch.Tensor]) -> None:
    assert loss_kind(build()) == LossKind()


@pytest.mark.parametrize("value", [None, 2.5, torch.tensor(1.0), "loss"])
def test_not_a_graph(value: object) -> None:
    assert loss_kind(value).kind == "unknown"


def test_penalty_and_broadcast() -> None:
    reg = sum(p.pow(2).sum() for p in LIN.parameters())
    k = loss_kind(F.cross_entropy(logits(), Y) + 1e-3 * reg)
    assert (k.kind, k.extra_terms) == ("cross_entropy", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in (F.mse_loss, F.l1_loss, F.smooth_l1_loss):
            assert loss_kind(fn(col(), R)).broadcast_from == (N, 1), fn.__name__
    assert loss_kind(F.mse_loss(col().squeeze(1), R)).broadcast_from is None


def test_loss_kind_walk_is_bounded() -> None:
    loss = F.mse_loss(vec(), R)
    for _ in range(200):  # a deep chain of scalings above the loss: beyond the walk's reach
        loss = loss * 1.0
    assert loss_kind(loss).kind == "unknown"
    wide = sum(vec()[i % N] * 0.0 for i in range(100)) + F.mse_loss(vec(), R)  # 100 terms before the loss
    assert loss_kind(wide).kind in ("mse", "unknown")  # bounded: at most 64 nodes visited


def test_as_facts() -> None:
    f = loss_kind(F.mse_loss(torch.sigmoid(vec()), P)).as_facts()
    assert f["loss_kind"] == "mse" and f["loss_input_activation"] == "sigmoid" and f["loss_reduction"] == "mean"
    json.dumps(f)


def test_loss_target() -> None:
    loss = F.mse_loss(vec(), R)
    assert loss_target(loss) is R or bool(loss_target(loss).equal(R))  # type: ignore[union-attr]
    assert loss_target((vec() - R).abs().mean()) is None  # not a built-in node
    assert loss_target(2.0) is None
    loss.backward()
    assert loss_target(loss) is None


# -- targets ---------------------------------------------------------------------------------


def _brute(t: torch.Tensor) -> dict[str, float]:
    rows = t.double().reshape(t.shape[0], -1)
    feats = rows.shape[1]
    var = [float(((rows[:, j] - rows[:, j].mean()) ** 2).mean()) for j in range(feats)]
    mad = [float((rows[:, j] - rows[:, j].median()).abs().mean()) for j in range(feats)]
    return {
        "min": float(rows.min()),
        "max": float(rows.max()),
        "mean": float(rows.mean()),
        "std": float(rows.std(correction=0)),
        "feature_var": sum(var) / feats,
        "feature_mad": sum(mad) / feats,
        "feature_std": sum(math.sqrt(v) for v in var) / feats,
    }


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(torch.randn(64) * 30 + 200, id="regression_unscaled"),
        pytest.param(torch.randn(33, 3), id="regression_3_outputs"),
        pytest.param(torch.rand(16, 2, 2), id="probabilities_3d"),
        pytest.param(torch.tensor([5.0]), id="one_sample"),
    ],
)
def test_target_summary_matches_brute_force(target: torch.Tensor) -> None:
    s = target_summary(target)
    for key, value in _brute(target).items():
        assert s[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert s["shape"] == list(target.shape) and s["dtype_kind"] == "float"


@pytest.mark.parametrize(
    ("target", "looks", "classes", "counts"),
    [
        pytest.param(torch.tensor([0, 2, 2, 1, 2]), "class_indices", 3, [1, 1, 3], id="class_indices"),
        pytest.param(torch.tensor([[1, 3], [3, -100]]), "class_indices", 4, [0, 1, 0, 2], id="lm_with_padding"),
        pytest.param(torch.tensor([0.0, 1.0, 1.0, 1.0]), "binary", 2, [1, 3], id="binary_float"),
        pytest.param(torch.tensor([[0], [1], [1]]).float(), "binary", 2, [1, 2], id="binary_column"),
        pytest.param(F.one_hot(torch.tensor([0, 2, 2]), 3).float(), "one_hot", 3, [1, 0, 2], id="one_hot"),
        pytest.param(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), "multi_hot", 2, [1, 2], id="multi_hot"),
        pytest.param(torch.tensor([0.2, 0.9, 0.5]), "probabilities", None, None, id="probabilities"),
        pytest.param(torch.tensor([0.0, 1.0, 2.0, 2.0]), "integer_levels", None, None, id="labels_cast_to_float"),
        pytest.param(torch.tensor([-1.5, 3.0]), "continuous", None, None, id="continuous"),
        pytest.param(torch.tensor([True, False, True]), "class_indices", 2, [1, 2], id="bool"),
    ],
)
def test_target_kinds(target: torch.Tensor, looks: str, classes: int | None, counts: list[int] | None) -> None:
    s = target_summary(target)
    assert (s["looks_like"], s["num_classes"], s["class_counts"]) == (looks, classes, counts)


def test_target_class_cap() -> None:
    s = target_summary(torch.tensor([0, 1, 5000]), cap=16)
    assert s["looks_like"] == "class_indices" and s["class_counts"] is None and s["distinct"] is None


def test_target_nonfinite_and_empty() -> None:
    s = target_summary(torch.tensor([1.0, math.nan, 3.0]))
    assert s["nonfinite"] == 1 and baseline_loss("mse", s) is None
    assert target_summary(torch.zeros(0))["looks_like"] == "empty"


# -- outputs ---------------------------------------------------------------------------------


def test_output_summary() -> None:
    out = torch.randn(16, 3) * 2 + 1
    s = output_summary(out)
    assert s is not None
    assert s["shape"] == [16, 3] and s["mean"] == pytest.approx(float(out.mean()), abs=1e-5)
    assert s["std"] == pytest.approx(float(out.std(correction=0)), rel=1e-5)
    assert s["spread"] == pytest.approx(float(out.std(0, correction=0).mean()), rel=1e-5)
    assert (s["min"], s["max"]) == (pytest.approx(float(out.min())), pytest.approx(float(out.max())))
    assert not s["row_sum_one"]
    const = output_summary(torch.full((16, 1), 0.3))
    assert const is not None and const["spread"] == pytest.approx(0.0, abs=1e-6)
    assert not const["row_sum_one"]  # one unit: not a softmax
    soft = output_summary(torch.softmax(torch.randn(4, 3), 1))
    assert soft is not None and soft["row_sum_one"]


def reference_output_pack(out: torch.Tensor) -> list[float]:
    """The output statistics written the plain way (masked copy, ``std(dim=0)``, elementwise bounds)."""
    x = out.detach().double()
    x = x.reshape(1, 1) if x.dim() == 0 else x
    finite = torch.isfinite(x)
    z = torch.where(finite, x, torch.zeros(()).double())
    spread = float(z.std(0, correction=0).mean()) if z.shape[0] > 1 else math.nan
    soft = z.shape[-1] > 1 and bool(((z >= 0) & (z <= 1)).all() & ((z.sum(-1) - 1).abs() < 1e-3).all())
    return [
        float(z.mean()),
        float(z.std(correction=0)),
        float(z.min()),
        float(z.max()),
        spread,
        float(soft),
        float((~finite).sum()),
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(32, 10) * 3 + 5,
        lambda: torch.randn(4, 6, 9),  # sequence logits: units over the last dimension, samples over the first
        lambda: torch.softmax(torch.randn(8, 5), -1),
        lambda: torch.sigmoid(torch.randn(16, 1)),
        lambda: torch.full((12, 3), 0.25),  # the same prediction for every sample: spread 0
        lambda: torch.randn(1, 7),  # one sample: no spread
        lambda: torch.tensor([[1.0, float("nan")], [float("inf"), -2.0], [3.0, 4.0]]),
        lambda: torch.tensor([[float("-inf")], [1.0]]),
        lambda: (torch.randn(6, 4) * 100).to(torch.bfloat16),
        lambda: torch.tensor(0.75),
        lambda: torch.randn(64, 8) * 1e-2 + 1000,  # mean 1e5 x the std (float32's spread is ~0.1% off at 1e6)
    ],
)
def test_output_pack_matches_the_plain_computation(make: Callable[[], torch.Tensor]) -> None:
    """The fast path (finite-sum check, two-pass spread, bounds from aminmax) gives the plain statistics."""
    out = make()
    got = output_pack(out).tolist()
    want = reference_output_pack(out)
    for name, g, w in zip(["mean", "std", "min", "max", "spread", "row_sum_one", "nonfinite"], got, want, strict=True):
        if math.isnan(w):
            assert math.isnan(g), name
        else:
            assert g == pytest.approx(w, rel=1e-5, abs=1e-6), name


def test_pick_output() -> None:
    class Out(dict):  # a Hugging Face ModelOutput is an ordered dict with attributes
        pass

    logits = torch.randn(2, 4, 7)
    assert pick_output(Out(loss=torch.tensor(1.0), logits=logits)) is logits
    assert pick_output({"loss": torch.tensor(1.0), "pred": logits}) is logits
    assert pick_output([torch.zeros(3, dtype=torch.long), logits]) is logits
    assert pick_output(torch.tensor(0.5)) is None and output_summary(None) is None


# -- baselines and shapes --------------------------------------------------------------------


def test_baselines_equal_the_loss_of_a_constant_prediction() -> None:
    y = torch.randn(200, 2) * 3 + 5
    s = target_summary(y)
    mean_pred = y.mean(0).expand_as(y)
    assert baseline_loss("mse", s) == pytest.approx(float(F.mse_loss(mean_pred, y)), rel=1e-4)
    assert baseline_loss("l1", s) == pytest.approx(float(F.l1_loss(y.median(0).values.expand_as(y), y)), rel=1e-4)
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    prior = torch.tensor([0.5, 0.3, 0.2]).log().expand(100, 3)
    expected = float(F.cross_entropy(prior, labels))
    assert baseline_loss("cross_entropy", target_summary(labels)) == pytest.approx(expected, rel=1e-5)
    one_hot = F.one_hot(labels, 3).float()
    assert baseline_loss("cross_entropy", target_summary(one_hot)) == pytest.approx(expected, rel=1e-5)
    multi = (torch.rand(100, 4) < torch.tensor([0.1, 0.5, 0.7, 0.2])).float()
    const = multi.mean(0).expand_as(multi)
    assert baseline_loss("bce", target_summary(multi)) == pytest.approx(
        float(F.binary_cross_entropy(const, multi)), rel=1e-4
    )
    probs = torch.rand(100)
    assert baseline_loss("bce_with_logits", target_summary(probs)) == pytest.approx(
        float(F.binary_cross_entropy(probs.mean().expand(100), probs)), rel=1e-4
    )
    assert baseline_loss("cross_entropy", target_summary(torch.tensor([0, 1, 2, 3]))) == pytest.approx(math.log(4))


def test_baseline_smooth_l1_is_approximate() -> None:
    small = torch.randn(500) * 0.2
    approx = baseline_loss("smooth_l1", target_summary(small))
    assert approx == pytest.approx(float(F.smooth_l1_loss(small.mean().expand(500), small)), rel=0.05)
    big = torch.randn(500) * 20
    approx = baseline_loss("huber", target_summary(big))
    assert approx == pytest.approx(float(F.huber_loss(big.median().expand(500), big)), rel=0.05)


@pytest.mark.parametrize("kind", ["unknown", "nll", "multi_margin"])
def test_no_baseline(kind: str) -> None:
    assert baseline_loss(kind, target_summary(torch.tensor([0, 1]))) is None
    assert baseline_loss("mse", None) is None


@pytest.mark.parametrize(
    ("out", "tgt", "kind", "expected"),
    [
        pytest.param((32, 1), (32,), None, "broadcast", id="column_vs_vector"),
        pytest.param((32,), (32, 1), "mse", "broadcast", id="vector_vs_column"),
        pytest.param((32, 1), (32, 3), "bce", "broadcast", id="one_output_three_labels"),
        pytest.param((32, 2), (32, 3), "mse", "incompatible", id="incompatible"),
        pytest.param((32,), (32,), "mse", None, id="same"),
        pytest.param((32, 10), (32,), "cross_entropy", None, id="ce_class_indices"),
        pytest.param((4, 16, 100), (4, 16), "cross_entropy", None, id="lm_logits"),
        pytest.param((4, 100, 16), (4, 16), "cross_entropy", None, id="lm_channels_first"),
        pytest.param((32, 10), (32, 10), "cross_entropy", None, id="ce_probability_targets"),
        pytest.param((32, 10), (16,), "cross_entropy", "incompatible", id="ce_wrong_batch"),
    ],
)
def test_shape_mismatch(out: tuple[int, ...], tgt: tuple[int, ...], kind: str | None, expected: str | None) -> None:
    m = shape_mismatch(out, tgt, kind)
    assert (m.kind if m else None) == expected


def test_broadcast_confirmed_by_the_graph_only() -> None:
    from nndiag.collect.task import broadcast_confirmed

    out = col()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        builtin = loss_kind(F.mse_loss(out, R))
        l1 = loss_kind(F.l1_loss(out, R))
    assert broadcast_confirmed(builtin, out.shape) and broadcast_confirmed(l1, out.shape)
    assert not broadcast_confirmed(loss_kind(F.mse_loss(out.squeeze(1), R)), out.shape)  # squeezed: fine
    assert not broadcast_confirmed(loss_kind(F.binary_cross_entropy_with_logits(out.squeeze(1), P)), out.shape)
    hand = loss_kind(((out - R) ** 2).mean())
    assert hand.reduced_shape == (N, N) and broadcast_confirmed(hand, out.shape)
    assert not broadcast_confirmed(loss_kind(((out.squeeze(1) - R) ** 2).mean()), out.shape)
    assert not broadcast_confirmed(LossKind(), out.shape)
