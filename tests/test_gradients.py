"""Stacking per-device gradients gives the full-batch gradient of a real Theano model."""
import numpy as np
import pytest
from conftest import GRAD_ATOL, GRAD_RTOL, max_abs_diff
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mgpu_lab.gradients import mean_gradients, stack_gradients
from mgpu_lab.split import split_batch, split_sizes


def per_device(cnn_grad, x, y, n):
    """What N devices return: each the gradient of the mean loss over its own split."""
    return [cnn_grad(xs, ys)[1:] for xs, ys in split_batch(x, y, n)]


@pytest.mark.parametrize("n", range(1, 9))
@pytest.mark.parametrize("batch", [37, 64])  # 37 splits unevenly for every n > 1
def test_stacked_equals_full_batch(cnn_grad, digits, n, batch):
    x, y = digits[0][:batch], digits[1][:batch]
    full = cnn_grad(x, y)[1:]
    stacked = stack_gradients(per_device(cnn_grad, x, y, n), split_sizes(batch, n))
    for s, f in zip(stacked, full):
        np.testing.assert_allclose(s, f, atol=GRAD_ATOL, rtol=GRAD_RTOL)


def test_plain_mean_is_wrong_for_uneven_splits(cnn_grad, digits):
    x, y = digits[0][:5], digits[1][:5]  # 5 over 4 devices: splits [2, 1, 1, 1]
    full = cnn_grad(x, y)[1:]
    grads = per_device(cnn_grad, x, y, 4)
    wrong = max_abs_diff(mean_gradients(grads), full)
    right = max_abs_diff(stack_gradients(grads, [2, 1, 1, 1]), full)
    assert right < GRAD_ATOL < 100 * GRAD_ATOL < wrong


def test_plain_mean_is_right_for_equal_splits(cnn_grad, digits):
    x, y = digits[0][:8], digits[1][:8]
    full = cnn_grad(x, y)[1:]
    assert max_abs_diff(mean_gradients(per_device(cnn_grad, x, y, 4)), full) < GRAD_ATOL


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=8), st.data())
def test_stack_is_the_size_weighted_sum(sizes, data):
    grads = [[data.draw(arrays(np.float32, (3, 2), elements=st.floats(-10, 10, width=32)))]
             for _ in sizes]
    expected = sum(n * g[0].astype(np.float64) for n, g in zip(sizes, grads)) / sum(sizes)
    np.testing.assert_allclose(stack_gradients(grads, sizes)[0], expected, rtol=1e-6, atol=1e-6)


def test_stack_rejects_mismatched_input():
    g = [np.ones(3, np.float32)]
    with pytest.raises(ValueError, match="one split size per device"):
        stack_gradients([g, g], [1])
    with pytest.raises(ValueError, match="positive"):
        stack_gradients([g, g], [1, 0])
