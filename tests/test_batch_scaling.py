"""mgpu_lab.predict.batch_scaling: McCandlish et al.'s steps-samples trade-off, fitted."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu_lab.predict.batch_scaling import (TradeOff, fit_tradeoff, samples_to_target,
                                            steps_to_target)

BATCHES = np.array([2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], dtype=float)


def test_the_fit_recovers_a_known_tradeoff_exactly():
    truth = TradeOff(62.0, 1380.0, 1380.0 / 62.0)
    fit = fit_tradeoff(BATCHES, steps_to_target(BATCHES, truth))
    assert fit == pytest.approx(truth, rel=1e-12)
    assert fit.b_crit == pytest.approx(fit.e_min / fit.s_min, rel=1e-15)


@settings(max_examples=60, deadline=None)
@given(s_min=st.floats(1.0, 1e4), b_crit=st.floats(0.5, 5e3),
       batches=st.lists(st.integers(1, 4096), min_size=3, max_size=12, unique=True))
def test_the_fit_recovers_any_tradeoff_from_exact_points(s_min, b_crit, batches):
    truth = TradeOff(s_min, s_min * b_crit, b_crit)
    fit = fit_tradeoff(batches, steps_to_target(np.array(batches, float), truth))
    assert fit == pytest.approx(truth, rel=1e-6)


def test_the_fit_with_noise_is_close_and_unbiased_on_average():
    """5 % multiplicative scatter (about what two seeds give): over 200 noisy sweeps the
    median B_crit is within 2 % of the truth, and each is within 30 %."""
    truth = TradeOff(60.0, 1500.0, 25.0)
    rng = np.random.RandomState(0)
    clean = steps_to_target(BATCHES, truth)
    fits = [fit_tradeoff(BATCHES, clean * np.exp(0.05 * rng.standard_normal(len(BATCHES))))
            for _ in range(200)]
    b = np.array([f.b_crit for f in fits])
    assert np.median(b) == pytest.approx(truth.b_crit, rel=0.02)
    assert np.all(np.abs(b / truth.b_crit - 1) < 0.3)
    assert np.median([f.s_min for f in fits]) == pytest.approx(truth.s_min, rel=0.02)


def test_relative_residuals_keep_the_small_batches_from_deciding_s_min():
    """One small batch off by 10 % (100 steps of 1000) moves S_min by a few per cent, not
    by the 100 steps an absolute least-squares fit would let it pull."""
    truth = TradeOff(50.0, 2000.0, 40.0)
    s = steps_to_target(BATCHES, truth)
    s[0] *= 1.1
    assert fit_tradeoff(BATCHES, s).s_min == pytest.approx(truth.s_min, rel=0.05)


@settings(max_examples=50, deadline=None)
@given(s_min=st.floats(1.0, 1e4), b_crit=st.floats(0.5, 5e3), batch=st.floats(0.5, 1e5))
def test_steps_and_samples_lie_on_the_papers_hyperbola(s_min, b_crit, batch):
    fit = TradeOff(s_min, s_min * b_crit, b_crit)
    s, e = steps_to_target(batch, fit), samples_to_target(batch, fit)
    assert e == pytest.approx(batch * s, rel=1e-12)
    assert (s / fit.s_min - 1) * (e / fit.e_min - 1) == pytest.approx(1.0, rel=1e-9)


def test_at_the_critical_batch_both_costs_double():
    fit = TradeOff(70.0, 1400.0, 20.0)
    assert steps_to_target(20.0, fit) == pytest.approx(140.0)
    assert samples_to_target(20.0, fit) == pytest.approx(2800.0)
    assert isinstance(steps_to_target(20, fit), float)
    np.testing.assert_allclose(steps_to_target([10, 20, 40], fit), [210.0, 140.0, 105.0])


@pytest.mark.parametrize("batches, steps, match", [
    ([8, 16], [100, 60], "at least 3 points"),
    ([8, 8, 8], [100, 90, 110], "2 or more distinct"),
    ([8, 16, 32], [100, 60], "3 batch sizes but 2 step counts"),
    ([8, 0, 32], [100, 60, 40], "finite and positive"),
    ([8, 16, 32], [100, -60, 40], "finite and positive"),
    ([8, 16, 32], [100, math.nan, 40], "finite and positive"),
    ([8, 16, 32], [100, math.inf, 40], "finite and positive"),
    ([[8, 16, 32]], [[100, 60, 40]], "flat sequence"),
    (["a", 16, 32], [100, 60, 40], "must be numbers"),
])
def test_bad_input_says_what_is_wrong(batches, steps, match):
    with pytest.raises(ValueError, match=match):
        fit_tradeoff(batches, steps)


def test_data_without_a_tradeoff_are_refused():
    b = np.array([8.0, 16.0, 32.0, 64.0])
    with pytest.raises(ValueError, match="do not fall"):
        fit_tradeoff(b, 10.0 + b)  # steps grow with the batch
    with pytest.raises(ValueError, match="B_crit lies beyond"):
        fit_tradeoff(b, 1e5 / b ** 2)  # still falling faster than 1/B: no S_min


def test_predictions_check_their_inputs():
    fit = TradeOff(60.0, 1500.0, 25.0)
    with pytest.raises(TypeError, match="TradeOff"):
        steps_to_target(64, (60.0, 1500.0, 25.0))
    with pytest.raises(ValueError, match="finite and positive"):
        steps_to_target(0, fit)
    with pytest.raises(ValueError, match="finite and positive"):
        samples_to_target(64, TradeOff(-1.0, 1500.0, 25.0))
