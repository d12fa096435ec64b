"""Collectives by hand (pure numpy): the five definitions against direct numpy, the ring's
schedule, its simulation against stack_gradients, and the bytes each device sends."""
import numpy as np
import pytest

from mgpu_lab import collectives as C
from mgpu_lab.gradients import stack_gradients
from mgpu_lab.split import split_sizes


def device_arrays(N, P, seed=0, dtype=np.float32):
    rng = np.random.RandomState(seed)
    return [rng.randn(P).astype(dtype) for _ in range(N)]


@pytest.mark.parametrize("N", [1, 2, 3, 5])
def test_the_five_collectives_against_numpy(N):
    arrays = device_arrays(N, 11)
    total = np.sum(arrays, axis=0)
    root = N - 1
    for got in C.broadcast(arrays, root=root):
        assert np.array_equal(got, arrays[root])
    reduced = C.reduce(arrays, root=root)
    assert np.array_equal(reduced[root], total)
    assert all(np.array_equal(reduced[i], arrays[i]) for i in range(N) if i != root)
    pieces = C.reduce_scatter(arrays)
    assert [len(p) for p in pieces] == [b - a for a, b in C.ring_chunks(11, N)]
    assert np.array_equal(np.concatenate(pieces), total)
    for got in C.all_gather(pieces):
        assert np.array_equal(got, total)
    for got in C.all_reduce(arrays):
        assert np.array_equal(got, total)


def test_collectives_copy_and_refuse_bad_input():
    arrays = device_arrays(3, 4)
    out = C.broadcast(arrays)
    out[1][0] = 99.0  # every device holds its own copy
    assert out[0][0] == arrays[0][0] != 99.0
    with pytest.raises(ValueError, match="root must be a device 0..2, got 3"):
        C.reduce(arrays, root=3)
    with pytest.raises(ValueError, match="same shape"):
        C.all_reduce([np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="at least one"):
        C.all_gather([])
    with pytest.raises(ValueError, match="N >= 1"):
        C.ring_schedule(0)


@pytest.mark.parametrize("P,N", [(10, 3), (12, 4), (7, 1), (2, 5), (1000, 7)])
def test_ring_chunks_cover_P_with_sizes_within_one(P, N):
    chunks = C.ring_chunks(P, N)
    assert len(chunks) == N and chunks[0][0] == 0 and chunks[-1][1] == P
    assert all(b == c for (_, b), (c, _) in zip(chunks, chunks[1:]))
    sizes = [b - a for a, b in chunks]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("N", [2, 3, 4, 5])
def test_ring_schedule_is_a_ring(N):
    steps = C.ring_schedule(N)
    assert len(steps) == 2 * (N - 1)
    assert [op for op, _ in steps] == ["add"] * (N - 1) + ["copy"] * (N - 1)
    for s, (op, sends) in enumerate(steps):
        assert [(src, dst) for src, dst, _ in sends] == [(i, (i + 1) % N) for i in range(N)]
        assert sorted(c for _, _, c in sends) == list(range(N))  # each chunk moves once a step
        if op == "add":
            assert all(c == (i - s) % N for i, _, c in sends)  # the brief's rule
    # A device receives what its left neighbour sends (device_steps is the same table).
    for i in range(N):
        for (op, send, recv), (_, sends) in zip(C.device_steps(i, N), steps):
            assert send == sends[i][2] and recv == sends[(i - 1) % N][2]


@pytest.mark.parametrize("N", [2, 3, 4, 5])
def test_ring_equals_stack_gradients_for_uneven_splits(N):
    # 53 samples: splits of different sizes for every N here; P = 1001 is not divisible
    # by 2, 3, 4 or 5 either. The ring adds the weighted gradients in another order than
    # stack_gradients, so they agree to float32 round-off: |diff| <= 4 ulp of the largest
    # term (spacing(1.0) = 1.19e-7 for terms ~1) -> atol 5e-7 on gradients of size ~1.
    sizes = split_sizes(53, N)
    assert len(set(sizes)) == 2
    grads = device_arrays(N, 1001, seed=N)
    ref = stack_gradients([[g] for g in grads], sizes)[0]
    weights = (np.array(sizes, dtype=np.float64) / 53).astype(np.float32)
    run = C.simulate_ring_allreduce([w * g for w, g in zip(weights, grads)])
    for got in run.result:
        np.testing.assert_allclose(got, ref, rtol=0, atol=5e-7)
        assert np.array_equal(got, run.result[0])  # bit-equal on every device
    assert run.tables[-1] == [[frozenset(range(N))] * N] * N  # every chunk holds every device


def test_the_chunk_table_for_three_devices():
    run = C.simulate_ring_allreduce(device_arrays(3, 6))
    assert len(run.tables) == 1 + 2 * 2
    # After the reduce-scatter (step 2) device i holds the whole sum of chunk i+1.
    after_rs = run.tables[2]
    for i in range(3):
        assert after_rs[i][(i + 1) % 3] == frozenset({0, 1, 2})
    text = C.format_chunk_table(run.tables[1])
    assert text.splitlines()[2].split("|")[1].strip() == "0+1"  # device 1, chunk 0: its own + device 0's


@pytest.mark.parametrize("N", [2, 3, 4, 5])
@pytest.mark.parametrize("P", [60, 1001])
def test_bytes_each_device_sends(N, P):
    run = C.simulate_ring_allreduce(device_arrays(N, P))
    formula = C.ring_bytes_per_device(P, N)  # 2 (N-1) / N * P * 4
    assert sum(run.bytes_sent) == 2 * (N - 1) * P * 4  # every step moves each number once
    if P % N == 0:  # 60 divides by 2..5: exactly the formula on every device
        assert run.bytes_sent == [formula] * N
    else:  # a chunk has floor or ceil of P/N numbers: off by < 1 number a step
        assert all(abs(b - formula) < 2 * (N - 1) * 4 for b in run.bytes_sent)
