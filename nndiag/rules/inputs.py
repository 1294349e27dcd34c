"""Input rules: a model input far from zero mean and unit scale.

Example:
    >>> from nndiag.rules import AdvisorConfig, RunView
    >>> import pandas as pd
    >>> from nndiag.rules.inputs import input_not_normalized
    >>> rows = [(s, "input", st, v) for s in range(3) for st, v in (("act_mean", 120.0), ("act_std", 70.0))]
    >>> h = pd.DataFrame(rows, columns=["step", "layer", "stat", "value"])
    >>> [(d.code, d.layer, d.step) for d in input_not_normalized(RunView(h), AdvisorConfig())]
    [('input_not_normalized', 'input', 0)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis, Severity
from nndiag.rules.layers import InputScaleThresholds, SustainedThresholds, harmed, sustained_since
from nndiag.rules.registry import rule
from nndiag.rules.view import RunView


@dataclass(frozen=True)
class InputThresholds(SustainedThresholds, InputScaleThresholds):
    """When the model input counts as unnormalised (sustained)."""

    input_large: float = 10.0  # a warning when |mean| exceeds input_mean_abs by this factor (or std is off), or
    # when dead/saturated units come with it; O(1) offsets alone (count features) are info


@rule(
    "input_not_normalized",
    requires=(Q.ACT_MEAN, Q.ACT_STD),
    severity=("info", "warning"),
    rank=110,
    thresholds=InputThresholds,
    summary="input \\|mean\\| > 1, std > 10 or std < 0.01, sustained (recognises raw 0-255 pixels); a warning "
    "when \\|mean\\| > 10, the std is off, or dead/saturated units come with it, else info",
)
def input_not_normalized(view: RunView, t: InputThresholds) -> list[Diagnosis]:
    """The model input (layer ``input``) far from zero mean / unit scale at ``sustained_checks`` logging steps.

    ``|mean| > input_mean_abs``, ``std > input_std_max`` or ``std < input_std_min``. Integer inputs
    (token ids) are not recorded and never judged.
    """
    mean = view.series(Q.ACT_MEAN, Q.INPUT_LAYER).dropna()
    std = view.series(Q.ACT_STD, Q.INPUT_LAYER).dropna()
    if mean.empty or std.empty:
        return []
    mean, std = mean.align(std, join="inner")
    tiny = std < t.input_std_min
    if view.facts.batch_size is not None and view.facts.batch_size <= 1:
        tiny = tiny & False  # one sample: the spread over its elements says nothing about the features' scale
    bad = (mean.abs() > t.input_mean_abs) | (std > t.input_std_max) | tiny
    start = sustained_since(bad, t.sustained_checks)
    if start is None:
        return []
    # typical over the run of bad checks: the median resists one odd batch
    mu = float(mean[mean.index >= start].median())
    sd = float(std[std.index >= start].median())
    pixels = 20.0 <= mu <= 255.0 and 10.0 <= sd <= 128.0
    if pixels:
        what = "looks like raw 0-255 pixel values"
    elif sd < t.input_std_min:
        what = "is almost constant"
    else:
        what = "is not standardised"
    suggestions = [
        "Standardise the inputs with training-set statistics: x = (x - mean) / std per feature or channel, "
        "and apply the same transform to validation and test data.",
        "Check the preprocessing pipeline: the normalisation step may be missing or applied twice.",
    ]
    if pixels:
        suggestions.insert(
            0,
            "Scale images to [0, 1] (divide by 255, e.g. transforms.ToTensor()) and normalise per channel "
            "(transforms.Normalize(mean, std)).",
        )
    # O(1) features (counts, ratings) off zero mean train fine unless the network shows harm
    large = abs(mu) > t.input_large * t.input_mean_abs or sd > t.input_std_max or sd < t.input_std_min
    severity: Severity = "warning" if large or harmed(view) else "info"
    return [
        Diagnosis(
            code="input_not_normalized",
            severity=severity,
            step=start,
            layer="input",
            message=f"The model input has mean {mu:.3g} and std {sd:.3g}: it {what}.",
            evidence={"input_mean": mu, "input_std": sd, "input_rms": math.hypot(mu, sd)},
            suggestions=suggestions,
        )
    ]
