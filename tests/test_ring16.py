"""mgpu_lab.measure.ring16: what the 16-bit ring rounds (the replay of its schedule, each
device's part of the batch gradient) and the rounding statistics chapter 10 quotes."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu_lab.measure import ring16

F16 = lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)  # noqa: E731


def test_fp16_rounding_counted_by_hand():
    tiny = np.finfo(np.float16).tiny  # 2^-14
    g = np.array([1.0, 1 + 2 ** -12, tiny / 2, 2 ** -26, 0.0], np.float32)
    r = ring16.fp16_rounding(g)
    err = np.linalg.norm(F16(g) - g) / np.linalg.norm(g)
    assert r["relative_error"] == pytest.approx(err) and err > 0
    assert r["below_normal"] == pytest.approx(2 / 4)  # of the 4 nonzero values
    assert r["to_zero"] == pytest.approx(1 / 4)  # 2^-26 is below half the smallest subnormal
    assert (r["float16_tiny"], r["float16_max"]) == (tiny, 65504.0)


def test_the_replay_of_two_devices_by_hand():
    """N = 2, P = 4: device 0 sends chunk 0 = [0:2), device 1 chunk 1 = [2:4); each adds
    what it receives, then rounds the chunk it completed (device 0: chunk 1)."""
    a = np.array([1 + 2 ** -12, 2.0, 3.0, 1 + 2 ** -13], np.float32)
    b = np.array([1.0, 1.0, 1.0, 2 ** -12], np.float32)
    rounded, result = ring16.ring16_replay([a, b])
    sum0 = F16(a[:2]) + b[:2]  # device 1 completes chunk 0
    sum1 = F16(b[2:]) + a[2:]  # device 0 completes chunk 1
    want = np.concatenate([a[:2], b[2:], sum1, sum0])  # sends, then completed chunks in device order
    assert np.array_equal(rounded, want)
    assert np.array_equal(result, np.concatenate([F16(sum0), F16(sum1)]))
    assert result[0] == 2.0  # 1 + 2^-12 lost its last bit on the wire


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(0, 40), st.integers(0, 2 ** 16))
def test_the_replay_rounds_N_times_P_values_and_sums_close(n, p, seed):
    """Reduce-scatter: N - 1 steps, each sending N chunks (P values); then each completed
    chunk once (P values): N P values in all, for any P. The result is the sum to within
    float16's rounding (2^-11 of at most the sum of the magnitudes) at each of N roundings."""
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal(p).astype(np.float32) for _ in range(n)]
    rounded, result = ring16.ring16_replay(parts)
    assert rounded.size == n * p and result.dtype == np.float32
    exact = np.sum(parts, axis=0, dtype=np.float64)
    bound = n * 2 ** -11 * np.sum(np.abs(parts), axis=0) + 2 ** -24  # + a subnormal's step
    assert np.all(np.abs(result - exact) <= bound)
    assert np.array_equal(result, F16(result))  # every device holds float16 values


def test_device_parts_are_the_splits_weighted_by_n_i_over_B(cnn, digits):
    x, y = digits[0][:7], digits[1][:7]
    grad = cnn.gradient_function()
    parts = ring16.device_parts(grad, x, y, 2)  # splits of 4 and 3
    flat = lambda gs: np.concatenate([np.ravel(g) for g in gs])  # noqa: E731
    assert [p.dtype for p in parts] == [np.float32] * 2
    assert np.allclose(parts[0], flat(grad(x[:4], y[:4])) * 4 / 7)
    assert np.allclose(parts[1], flat(grad(x[4:], y[4:])) * 3 / 7)
    assert np.allclose(parts[0] + parts[1], flat(grad(x, y)), atol=1e-6)  # the batch's


@pytest.mark.integration  # one pool start of 2 devices: a few seconds
def test_the_replay_is_what_the_pools_16_bit_ring_computes(cnn, digits):
    """The pool's ring16, a step without update, ends with the replay's sum, bit for bit."""
    from mgpu_lab.engines.local import DevicePool
    x, y = digits[0][:64], digits[1][:64]
    _, want = ring16.ring16_replay(ring16.device_parts(cnn.gradient_function(), x, y, 2))
    with DevicePool(cnn.spec, n_devices=2, strategy="ring16") as pool:
        pool.step(cnn.get_values(), x, y)
        got = np.concatenate([np.ravel(g) for g in pool.step_gradient()])
    assert np.array_equal(got, want)


def test_the_saved_measurement_has_what_chapter_10_reads():
    r = ring16.load()
    P = r["settings"]["n_params"]
    n = r["settings"]["n_devices"]
    assert r["first_step_wire"]["n_rounded"] == n * P
    assert len(r["first_step_parts"]) == n
    host, r16 = r["runs"]["host"], r["runs"]["ring16"]
    assert host["diff_over_moved"] == 0 and 0 < r16["diff_over_moved"] < 1
    assert 0 < host["moved"] < 1
    for run in r["runs"].values():
        assert run["final_correct"] == round(run["final_accuracy"] * r["settings"]["n_eval"])
