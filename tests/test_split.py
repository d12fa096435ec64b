import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu_lab.split import split_batch, split_sizes


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(n, 300))))
def test_splits_partition_the_batch_in_order(n_and_batch):
    n, batch = n_and_batch
    x = np.arange(batch * 3, dtype=np.float32).reshape(batch, 3)
    y = np.arange(batch, dtype=np.int32)
    splits = split_batch(x, y, n)
    sizes = [len(xs) for xs, _ in splits]
    assert len(splits) == n
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert sizes == split_sizes(batch, n)
    np.testing.assert_array_equal(np.concatenate([xs for xs, _ in splits]), x)
    np.testing.assert_array_equal(np.concatenate([ys for _, ys in splits]), y)
    for xs, ys in splits:  # views, not copies: no data moves until a device reads it
        assert np.shares_memory(xs, x) and np.shares_memory(ys, y)
        np.testing.assert_array_equal(ys, xs[:, 0] // 3)  # pairs stay together


@given(st.integers(1, 8), st.integers(1, 300))
def test_larger_splits_come_first(n, batch):
    if batch >= n:
        sizes = split_sizes(batch, n)
        assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("x_len, y_len, n, words", [
    (10, 9, 2, "same length"),
    (10, 10, 0, ">= 1"),
    (10, 10, -3, ">= 1"),
    (3, 3, 4, "at least one sample"),
    (0, 0, 1, "empty"),
])
def test_bad_input_names_the_problem(x_len, y_len, n, words):
    with pytest.raises(ValueError, match=words):
        split_batch(np.zeros((x_len, 2)), np.zeros(y_len), n)


@pytest.mark.parametrize("n", [2.0, "2", None, True])
def test_n_devices_must_be_an_integer(n):
    with pytest.raises(ValueError, match="integer"):
        split_batch(np.zeros((4, 2)), np.zeros(4), n)
