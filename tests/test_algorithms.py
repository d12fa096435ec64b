"""The exchange algorithms, each on a hand-computed case (mgpu_lab.predict.algorithms)."""
import math

import pytest

from mgpu_lab.predict import algorithms as A


def test_halving_doubling_has_the_rings_bytes_in_log_steps():
    # 8 GPUs, 1 MB, 10 GB/s, 10 us: 2 * 7/8 * 100 us + 2 * 3 * 10 us
    assert A.halving_doubling_seconds(1e6, 8, 1e10, 1e-5) == pytest.approx(175e-6 + 60e-6)
    for n in (2, 4, 16, 64, 256):
        bw_only = A.halving_doubling_seconds(1e8, n, 1e10, 0)
        assert bw_only == pytest.approx(A.ring_allreduce_seconds(1e8, n, 1e10, 0))
        assert A.latency_steps("halving_doubling", n) == 2 * int(math.log2(n))
    # so it beats the ring on latency and recursive doubling on bandwidth at once
    assert A.halving_doubling_seconds(1e8, 64, 1e10) < A.ring_allreduce_seconds(1e8, 64, 1e10)
    assert A.halving_doubling_seconds(1e8, 64, 1e10) < A.recursive_doubling_seconds(1e8, 64, 1e10)


def test_recursive_doubling_is_the_old_tree():
    assert A.tree_allreduce_seconds is A.recursive_doubling_seconds
    assert A.comm_seconds("tree", 1e6, 8, 1, 1e10, 1e-5) == pytest.approx(3 * (100e-6 + 1e-5))
    assert A.latency_steps("tree", 5) == 3  # ceil(log2 5): an approximation off powers of two


def test_double_tree_has_the_rings_bandwidth_term_and_a_log_latency():
    # NCCL's trees reach the ring's bus bandwidth (2(N-1)/N S/b); their gain is the latency
    for n in (2, 8, 64):
        assert A.double_tree_seconds(1e6, n, 1e10, 0) == pytest.approx(
            A.ring_allreduce_seconds(1e6, n, 1e10, 0))
    assert A.double_tree_seconds(1e6, 8, 1e10, 1e-5) == pytest.approx(175e-6 + 6e-5)
    assert A.double_tree_seconds(1e6, 64, 1e10, 1e-5) < A.ring_allreduce_seconds(1e6, 64, 1e10, 1e-5)
    assert A.double_tree_seconds(1e6, 1, 1e10, 1e-5) == 0


def test_sharded_moves_the_rings_bytes():
    for n in (1, 2, 3, 8, 100):
        assert A.sharded_seconds(4e6, n, 1e10, 1e-5) == pytest.approx(
            A.ring_allreduce_seconds(4e6, n, 1e10, 1e-5))
    assert A.comm_seconds("sharded", 4e6, 4, 1, 1e10, 0) == pytest.approx(2 * 3 / 4 * 4e6 / 1e10)


def test_mpi_host_has_2_n_minus_1_transfers_and_the_stacking():
    t = A.mpi_host_seconds(10e6, 2, 1e10, latency=1e-5, memory_bw=1e10)
    # one rank sends 10 MB and receives 10 MB: 1 ms + 10 us each way; rank 0 stacks 3 x 10 MB
    assert t["gather"] == pytest.approx(1.01e-3) and t["broadcast"] == pytest.approx(1.01e-3)
    assert t["stack"] == pytest.approx(3e-3)
    assert t["total"] == pytest.approx(2 * 1.01e-3 + 3e-3)
    # the chapter-6 host gather (the host is not a device) pays 2N = 4 transfers instead
    assert A.host_gather_seconds(10e6, 2, 1e10, 1e-5) == pytest.approx(2 * t["gather"] * 2)
    assert A.mpi_host_seconds(10e6, 1, 1e10)["total"] == 0
    with pytest.raises(ValueError, match="n_ranks"):
        A.mpi_host_seconds(10e6, 0, 1e10)


def test_unknown_algorithm_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose one of host, ring, sharded, halving_doubling, "
                                         "recursive_doubling, double_tree, tree"):
        A.comm_seconds("butterfly", 1e6, 4, 1e9, 1e9)
