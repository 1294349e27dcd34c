"""The pure loss-curve analysis (nndiag.rules.curves) on arrays, without a run or a view."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nndiag.rules.curves import (
    CurveParams,
    DivergenceParams,
    OscillationParams,
    PlateauParams,
    divergence,
    finite_losses,
    median_samples,
    oscillation,
    plateau,
    relative_drop,
    relative_noise,
    smooth_curve,
    streak_start,
)


def curve(values: np.ndarray, params: CurveParams = CurveParams(), chance: float | None = None):  # noqa: B008
    c = smooth_curve(np.arange(len(values)), values, params, chance)
    assert c is not None
    return c


def test_finite_losses_and_first_nonfinite() -> None:
    steps, values, bad = finite_losses(np.arange(4), np.array([1.0, np.nan, 2.0, np.inf]))
    assert steps.tolist() == [0, 2] and values.tolist() == [1.0, 2.0] and bad == 1
    assert smooth_curve(np.arange(2), np.array([1.0, np.nan]), CurveParams()) is None


def test_noisy_losses_get_a_longer_smoothing_window() -> None:
    rng = np.random.default_rng(0)
    quiet = curve(np.full(200, 1.0) * np.exp(rng.normal(0, 0.01, 200)))
    noisy = curve(np.full(200, 1.0) * np.exp(rng.normal(0, 0.6, 200)))
    assert quiet.smooth_window == CurveParams().loss_smooth_steps
    assert noisy.smooth_window > 30
    assert noisy.noise == pytest.approx(0.6, rel=0.3)


def test_divergence_is_found_with_its_onset_and_not_on_a_falling_curve() -> None:
    p = DivergenceParams()
    rising = np.r_[np.linspace(2.0, 1.0, 40), np.linspace(1.0, 10.0, 40)]
    d = divergence(curve(rising, p), p)
    assert d is not None and not d.exploded
    assert 40 <= d.onset <= 60 and d.factor > 5 and 30 <= d.min_step <= 45
    assert divergence(curve(np.linspace(2.0, 0.5, 80), p), p) is None
    exploded = np.r_[np.linspace(2.0, 1.0, 20), [5e3, 6e3]]
    e = divergence(curve(exploded, p), p)
    assert e is not None and e.exploded and e.onset == 20


def test_one_spike_is_not_divergence() -> None:
    p = DivergenceParams()
    values = np.linspace(2.0, 1.0, 60)
    values[30] = 50.0
    assert divergence(curve(values, p), p) is None


def test_oscillation_needs_large_swings_without_progress() -> None:
    p = OscillationParams()
    rng = np.random.default_rng(1)
    swinging = np.exp(rng.normal(0.0, 0.8, 1200))  # noisy: the window grows until its medians resolve 10% progress
    o = oscillation(curve(swinging, p), p)
    assert o is not None and o.swing > 0.5 and o.window >= p.oscillation_window
    assert o.window > 200
    falling = np.geomspace(3.0, 0.3, 1200) * np.exp(rng.normal(0.0, 0.8, 1200))
    assert oscillation(curve(falling, p), p) is None


def test_plateau_weighs_the_drop_against_its_noise() -> None:
    p = PlateauParams()
    flat = plateau(curve(np.r_[np.linspace(2.0, 1.0, 20), np.full(100, 1.0)], p), p)
    assert flat is not None and flat.drop == pytest.approx(0.0) and flat.level == pytest.approx(1.0)
    assert plateau(curve(np.linspace(2.0, 0.5, 120), p), p) is None
    converged = np.r_[np.linspace(2.0, 1e-5, 20), np.full(100, 1e-5)]
    assert plateau(curve(converged, p), p) is None


def test_small_helpers() -> None:
    assert streak_start(np.array([False, True, True])) == 1
    assert streak_start(np.array([], dtype=bool)) is None
    assert relative_noise(np.array([1.0])) == 0.0
    assert math.isnan(relative_drop(np.array([0.0, 0.0, 0.0])))
    assert median_samples(math.inf, 0.1) == 2**62
