"""mgpu_lab.statistics: the noise-scale estimators are unbiased (exactly in expectation, and
on synthetic Gaussian gradients with a known covariance), the EMA is a ratio of averages,
and bad input is refused with a message that says what is right."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu_lab.statistics import NoiseScale, NoiseScaleEMA, gradient_noise_scale

sizes_lists = st.lists(st.integers(1, 64), min_size=2, max_size=8)


@given(sizes=sizes_lists, trace=st.floats(0.0, 1e3), grad_sq=st.floats(1e-3, 1e3))
def test_expected_norms_give_back_the_truth(sizes, trace, grad_sq):
    """The estimators are linear in the norms, so plugging in their expectations,
    E|g_b|^2 = |G|^2 + tr(Σ)/b, must return tr(Σ) and |G|^2: that is unbiasedness."""
    batch = sum(sizes)
    got = gradient_noise_scale(sizes, [grad_sq + trace / n for n in sizes],
                               grad_sq + trace / batch)
    assert got.trace_sigma == pytest.approx(trace, rel=1e-9, abs=1e-9 * grad_sq)
    assert got.grad_sq == pytest.approx(grad_sq, rel=1e-9, abs=1e-9 * (trace + 1))
    assert got.b_simple == pytest.approx(trace / grad_sq, rel=1e-8, abs=1e-9)


def _one_step_norms(rng, mean, std, sizes, trials):
    """|g_i|^2 (trials, N) and |g|^2 (trials,) of per-example gradients ~ N(mean, diag std^2)."""
    batch = sum(sizes)
    per_example = mean + std * rng.standard_normal((trials, batch, len(mean)))  # (T, B, d)
    bounds = np.cumsum([0] + list(sizes))
    split_means = [per_example[:, a:b].mean(axis=1) for a, b in zip(bounds[:-1], bounds[1:])]
    stacked = sum((n / batch) * g for n, g in zip(sizes, split_means))  # (T, d)
    return (np.stack([(g ** 2).sum(axis=1) for g in split_means], axis=1),
            (stacked ** 2).sum(axis=1))


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=4),
       dim=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_unbiased_on_gaussian_gradients_with_known_covariance(sizes, dim, seed):
    """Averaged over many steps, the estimates agree with the known tr(Σ) and |G|^2 within
    4 standard errors (the errors from the spread of the per-step estimates)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0.0, 1.0, dim)
    std = rng.uniform(0.2, 2.0, dim)
    trials = 4000
    small, big = _one_step_norms(rng, mean, std, sizes, trials)
    steps = [gradient_noise_scale(sizes, s, b) for s, b in zip(small, big)]
    for name, truth in (("trace_sigma", (std ** 2).sum()), ("grad_sq", (mean ** 2).sum())):
        values = np.array([getattr(s, name) for s in steps])
        z = (values.mean() - truth) / (values.std(ddof=1) / math.sqrt(trials))
        assert abs(z) < 4, (name, values.mean(), truth, z)


def test_equal_splits_are_the_papers_estimator():
    """B_small = B/N and |G_small|^2 the mean of the devices' squared norms (App. A.1)."""
    small, big, n, batch = [3.0, 5.0, 4.0, 6.0], 2.5, 8, 32
    mean_small = np.mean(small)
    got = gradient_noise_scale([n] * 4, small, big)
    assert got.grad_sq == pytest.approx((batch * big - n * mean_small) / (batch - n))
    assert got.trace_sigma == pytest.approx((mean_small - big) / (1 / n - 1 / batch))
    assert isinstance(got, NoiseScale) and got.b_simple == got.trace_sigma / got.grad_sq


def test_unequal_splits_weight_each_pair_by_its_size():
    """Splits (1, 3): two two-point estimators, weighted 1/4 and 3/4."""
    got = gradient_noise_scale([1, 3], [10.0, 4.0], 3.0)
    g1, g2 = (4 * 3.0 - 1 * 10.0) / 3, (4 * 3.0 - 3 * 4.0) / 1
    s1, s2 = (10.0 - 3.0) / (1 - 1 / 4), (4.0 - 3.0) / (1 / 3 - 1 / 4)
    assert got.grad_sq == pytest.approx(0.25 * g1 + 0.75 * g2)
    assert got.trace_sigma == pytest.approx(0.25 * s1 + 0.75 * s2)


def test_no_signal_gives_nan_not_a_division_error():
    got = gradient_noise_scale([2, 2], [1.0, 1.0], 1.0)  # |G|^2 estimate = 1, tr = 0
    assert got.b_simple == 0.0
    got = gradient_noise_scale([2, 2], [2.0, 2.0], 0.5)  # |G|^2 estimate = -1
    assert got.grad_sq < 0 and math.isnan(got.b_simple)


@pytest.mark.parametrize("sizes", [[8], [], (16,)])
def test_one_device_has_no_second_batch_size(sizes):
    with pytest.raises(ValueError, match="two batch sizes.*2 or more devices"):
        gradient_noise_scale(sizes, [1.0] * len(sizes), 1.0)


@pytest.mark.parametrize("sizes, norms, big, match", [
    ([4, 4], [1.0], 1.0, "one squared norm per split"),
    ([4, 4], [1.0, 1.0, 1.0], 1.0, "one squared norm per split"),
    ([4, 0], [1.0, 1.0], 1.0, "integers >= 1"),
    ([4, -2], [1.0, 1.0], 1.0, "integers >= 1"),
    ([4, 2.5], [1.0, 1.0], 1.0, "integers >= 1"),
    ([4, True], [1.0, 1.0], 1.0, "integers >= 1"),
    ([4, 4], [1.0, -1e-3], 1.0, r"split_sq_norms\[1\] must be finite and >= 0"),
    ([4, 4], [float("nan"), 1.0], 1.0, r"split_sq_norms\[0\] must be finite"),
    ([4, 4], [1.0, 1.0], float("inf"), "batch_sq_norm must be finite"),
    ([4, 4], [1.0, 1.0], -1.0, "batch_sq_norm must be finite and >= 0"),
    ([4, 4], [1.0, "2"], 1.0, "must be a number"),
    ([4, 4], [1.0, 1.0], None, "batch_sq_norm must be a number"),
])
def test_bad_input_says_what_is_right(sizes, norms, big, match):
    with pytest.raises(ValueError, match=match):
        gradient_noise_scale(sizes, norms, big)


def test_numpy_inputs_are_accepted():
    got = gradient_noise_scale(np.array([4, 4]), np.array([2.0, 3.0], np.float32),
                               np.float32(1.5))
    assert got == gradient_noise_scale([4, 4], [2.0, 3.0], 1.5)


def test_ema_is_the_ratio_of_the_averaged_estimators():
    ema = NoiseScaleEMA(beta=0.5)
    assert ema.value is None and ema.steps == 0
    steps = [([4, 4], [3.0, 5.0], 2.0), ([4, 4], [2.0, 2.5], 1.0), ([2, 6], [9.0, 1.0], 1.5)]
    raw = [gradient_noise_scale(*s) for s in steps]
    for s in steps:
        got = ema.update(*s)
    # weights of a 0.5-decay EMA over 3 steps, debiased: (0.125, 0.25, 0.5) / 0.875
    w = np.array([0.125, 0.25, 0.5]) / 0.875
    trace = float(w @ [r.trace_sigma for r in raw])
    grad_sq = float(w @ [r.grad_sq for r in raw])
    assert got == ema.value and ema.steps == 3
    assert got.trace_sigma == pytest.approx(trace) and got.grad_sq == pytest.approx(grad_sq)
    assert got.b_simple == pytest.approx(trace / grad_sq)
    assert got.b_simple != pytest.approx(float(w @ [r.b_simple for r in raw]))


def test_ema_of_a_constant_is_that_constant_from_the_first_step():
    """The debiasing removes the zero start: no warm-up drift towards 0."""
    ema = NoiseScaleEMA(beta=0.99)
    one = gradient_noise_scale([3, 5], [4.0, 3.0], 2.0)
    for _ in range(3):
        assert ema.update([3, 5], [4.0, 3.0], 2.0).b_simple == pytest.approx(one.b_simple)


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5, "0.9", None, True])
def test_ema_refuses_a_bad_decay(beta):
    with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1\)"):
        NoiseScaleEMA(beta=beta)


def test_ema_passes_bad_steps_on_as_errors():
    ema = NoiseScaleEMA()
    with pytest.raises(ValueError, match="two batch sizes"):
        ema.update([8], [1.0], 1.0)
    assert ema.steps == 0 and ema.value is None


@given(sizes=sizes_lists, trace=st.floats(0.0, 1e3), grad_sq=st.floats(1e-3, 1e3),
       extra=st.integers(0, 2000))
def test_population_undoes_sampling_without_replacement(sizes, trace, grad_sq, extra):
    """Without replacement from D samples, E|g_b|^2 = |G|^2 + (tr(Σ)/b)(D - b)/(D - 1):
    with ``population=D`` the expected norms give back the truth again."""
    batch = sum(sizes)
    D = max(batch, 2) + extra
    def expected(b):
        return grad_sq + trace / b * (D - b) / (D - 1)
    got = gradient_noise_scale(sizes, [expected(n) for n in sizes], expected(batch),
                               population=D)
    assert got.trace_sigma == pytest.approx(trace, rel=1e-8, abs=1e-8 * grad_sq)
    assert got.grad_sq == pytest.approx(grad_sq, rel=1e-8, abs=1e-8 * (trace + 1))
    plain = gradient_noise_scale(sizes, [expected(n) for n in sizes], expected(batch))
    assert plain.grad_sq == pytest.approx(grad_sq - trace / (D - 1), rel=1e-8,
                                          abs=1e-8 * (trace + 1))


def test_sampling_without_replacement_on_a_finite_population():
    """Monte Carlo: batches without replacement from 40 fixed Gaussian 'gradients'; the
    corrected estimates agree with the population's tr(Σ) and |G|^2 within 4 SE."""
    rng = np.random.default_rng(0)
    D, sizes, trials = 40, [7, 5], 20000
    pop = rng.normal(0.3, 1.0, (D, 3))  # (D, d): the population's per-example gradients
    mean = pop.mean(axis=0)
    truth = (((pop - mean) ** 2).sum(axis=1).mean(), float(mean @ mean))
    est = np.empty((trials, 2))
    for t in range(trials):
        batch = pop[rng.permutation(D)[:sum(sizes)]]
        g1, g2 = batch[:sizes[0]].mean(axis=0), batch[sizes[0]:].mean(axis=0)
        g = (sizes[0] * g1 + sizes[1] * g2) / sum(sizes)
        r = gradient_noise_scale(sizes, [g1 @ g1, g2 @ g2], g @ g, population=D)
        est[t] = r.trace_sigma, r.grad_sq
    z = (est.mean(axis=0) - truth) / (est.std(axis=0, ddof=1) / math.sqrt(trials))
    assert np.all(np.abs(z) < 4), (est.mean(axis=0), truth, z)


@pytest.mark.parametrize("population", [10, 1, 2.5, True, "100"])
def test_a_bad_population_is_refused(population):
    with pytest.raises(ValueError, match="population must be the number of samples"):
        gradient_noise_scale([8, 8], [1.0, 1.0], 0.5, population=population)
