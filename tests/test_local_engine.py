"""The local engine: N worker processes give the serial engine's gradients, and die with the
pool; with strategy="ring" they all-reduce among themselves and end where the host does."""
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
from conftest import GRAD_ATOL, GRAD_RTOL, max_abs_diff
from test_faults import big_batch, kill_when_busy, wait_gone

from mgpu_lab.engines.local import DevicePool
from mgpu_lab.engines.serial import SerialEngine
from mgpu_lab.errors import NonFiniteGradient, WorkerDied
from mgpu_lab.optim import SGD, Adam, Momentum
from mgpu_lab.trainer import DataParallelTrainer

pytestmark = pytest.mark.integration  # worker processes (tests/README.md: tiers)


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("n", [pytest.param(1, marks=pytest.mark.slow), 2,  # 2: in make test
                               pytest.param(3, marks=pytest.mark.slow),
                               pytest.param(4, marks=pytest.mark.slow)])
def test_pool_matches_serial_engine(cnn, digits, n):
    x, y = digits[0][:53], digits[1][:53]  # 53 splits unevenly for n = 2, 3, 4
    values = cnn.get_values()
    with SerialEngine(cnn.spec, n) as serial:
        ref = serial.step(values, x, y)
    with DevicePool(cnn.spec, n) as pool:
        got = pool.step(values, x, y)
        assert got.split_sizes == ref.split_sizes
        assert len(got.device_seconds) == n and all(t > 0 for t in got.device_seconds)
        for g, r in zip(got.grads, ref.grads):
            np.testing.assert_allclose(g, r, atol=GRAD_ATOL, rtol=GRAD_RTOL)
        assert abs(got.loss - ref.loss) < 1e-5
        if n == 2:  # a batch larger than the pool's first buffer: the buffer grows
            big = pool.step(values, digits[0][:300], digits[1][:300])
            with SerialEngine(cnn.spec, 2) as serial:
                ref_big = serial.step(values, digits[0][:300], digits[1][:300])
            for g, r in zip(big.grads, ref_big.grads):
                np.testing.assert_allclose(g, r, atol=GRAD_ATOL, rtol=GRAD_RTOL)
        assert all(np.array_equal(a, b) for a, b in zip(pool.gradients(values, x, y), got.grads))
        pids = pool.pids()
        assert len(set(pids)) == n and all(psutil.pid_exists(p) for p in pids)
    assert all(gone(p) for p in pids)


@pytest.mark.slow
def test_no_worker_survives_an_exception(cnn, digits):
    with pytest.raises(RuntimeError, match="boom"):
        with DevicePool(cnn.spec, 2) as pool:
            pids = pool.pids()
            pool.step(cnn.get_values(), digits[0][:8], digits[1][:8])
            raise RuntimeError("boom")
    assert all(gone(p) for p in pids)


# -- strategy="ring": the devices all-reduce among themselves and each one updates --------
# 61 samples split unevenly on 2, 3 and 4 devices. The ring adds the N weighted float32
# gradients in another order than the host's stack_gradients, so after 20 steps the
# parameters (size ~0.1-1) differ by float32 round-off, a few units in the last place:
# 1e-6 absolute allows that and nothing like a wrong weighting.
RING_ATOL = 1e-6


def train(spec, n, optimizer, strategy, x, y, steps=20, engine="local"):
    with DataParallelTrainer(spec, n, optimizer, engine=engine, strategy=strategy) as tr:
        tr.fit(x, y, batch_size=61, steps=steps, progress=False)
        copies = tr.engine.device_parameters() if strategy == "ring" else None
        return tr, copies


@pytest.mark.parametrize("n,optimizer", [(2, lambda: Momentum(0.05)),  # in make test
                                         pytest.param(3, lambda: Adam(0.01), marks=pytest.mark.slow),
                                         pytest.param(4, lambda: SGD(0.1), marks=pytest.mark.slow)])
def test_ring_ends_at_the_host_parameters(cnn, digits, n, optimizer):
    # The host gather's reference is the serial engine, in this process: the pool's host
    # gather computes the same gradients (test_pool_matches_serial_engine).
    host, _ = train(cnn.spec, n, optimizer(), "host", *digits, engine="serial")
    ring, copies = train(cnn.spec, n, optimizer(), "ring", *digits)
    worst = max_abs_diff(ring.model.get_values(), host.model.get_values())
    print(f"n={n} {host.optimizer.name}: ring - host, largest parameter difference {worst:.3g}")
    assert worst <= RING_ATOL
    np.testing.assert_allclose([h["loss"] for h in ring.history],
                               [h["loss"] for h in host.history], rtol=1e-5)
    # The host's optimizer took the devices' state: the same slots, the same step count.
    assert ring.opt_t == host.opt_t == 20
    assert len(ring.opt_state) == len(host.opt_state)
    for slot_r, slot_h in zip(ring.opt_state, host.opt_state):
        assert max_abs_diff(slot_r, slot_h) <= RING_ATOL
    # Every device applied the update itself and ended with the same parameters, bit for bit.
    assert copies.shape == (n, cnn.n_params)
    assert all(np.array_equal(row, copies[0]) for row in copies)
    assert ring.history[-1]["timings"].stack == 0.0  # the host stacked nothing


@pytest.mark.slow
def test_ring_gradient_matches_the_serial_engine_and_needs_a_picklable_update(cnn, digits):
    x, y = digits[0][:53], digits[1][:53]
    values = cnn.get_values()
    with SerialEngine(cnn.spec, 3) as serial:
        ref = serial.step(values, x, y)
    with DevicePool(cnn.spec, 3, strategy="ring") as pool:
        got = pool.step(values, x, y)  # no update: the all-reduced gradient only
        assert got.new_values is None and got.new_state is None and got.timings.exchange > 0
        for g, r in zip(got.grads, ref.grads):
            np.testing.assert_allclose(g, r, atol=GRAD_ATOL, rtol=GRAD_RTOL)
        with pytest.raises(TypeError, match=r"update must be an Update\(optimizer, state, t\)"):
            pool.step(values, x, y, lambda v, g, loss: v)  # not an update the devices can run
        assert not pool.closed  # refused before any work


@pytest.mark.slow
def test_ring_refuses_a_non_finite_step_and_leaves_everything_untouched(cnn, digits):
    x, y = digits[0][:40], digits[1][:40]
    with DataParallelTrainer(cnn.spec, 2, Momentum(0.05), strategy="ring") as tr:
        tr.step(x, y)
        before, state = tr.model.get_values(), [a.copy() for a in tr.opt_state[0]]
        with pytest.raises(NonFiniteGradient, match="step 1: the gradient"):
            tr.step(x * np.float32(3e38), y)  # finite input, infinite activations
        assert max_abs_diff(tr.model.get_values(), before) == 0.0
        assert max_abs_diff(tr.opt_state[0], state) == 0.0 and tr.opt_t == 1
        assert np.isfinite(tr.step(x, y)) and tr.opt_t == 2  # the pool carries on


@pytest.mark.slow
def test_a_worker_killed_before_a_ring_step_stops_its_neighbours(cnn, digits):
    x, y = digits[0][:40], digits[1][:40]
    with DataParallelTrainer(cnn.spec, 3, Momentum(0.05), strategy="ring",
                             snapshot_every=1) as tr:  # a snapshot after every step: none lost
        tr.step(x, y)
        pids, before = tr.engine.pids(), tr.model.get_values()
        os.kill(pids[1], signal.SIGKILL)
        with pytest.raises(WorkerDied, match="device 1's worker process died"):
            tr.step(x, y)  # devices 0 and 2 wait in the ring for device 1: they must stop too
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(gone(p) for p in pids):
            time.sleep(0.05)
        assert all(gone(p) for p in pids)
        assert max_abs_diff(tr.model.get_values(), before) == 0.0 and tr.opt_t == 1


def test_bad_strategy_names_get_a_clear_error(cnn):
    known = "choose one of host, ring, sharded, hierarchical"
    with pytest.raises(ValueError, match=f"unknown strategy 'tree'; {known}"):
        DevicePool(cnn.spec, 2, strategy="tree")  # refused before any worker starts
    with pytest.raises(ValueError, match=f"unknown strategy 'Ring'; {known}"):
        DataParallelTrainer(cnn.spec, 2, engine="local", strategy="Ring")
    with pytest.raises(ValueError, match="SerialEngine runs its devices one after another .* "
                                         "strategy 'ring' needs that: use engine 'local' or 'mpi'"):
        DataParallelTrainer(cnn.spec, 2, engine="serial", strategy="ring")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_worker_killed_in_the_middle_of_a_ring_step_is_the_one_named(cnn):
    # Its neighbours see their links break; they must not be blamed for it.
    x, y = big_batch()
    with DataParallelTrainer(cnn.spec, 3, Momentum(0.05), strategy="ring",
                             snapshot_every=1) as tr:  # a snapshot after every step: none lost
        tr.step(x, y)
        pids, before, state = tr.engine.pids(), tr.model.get_values(), tr.opt_state
        killed = {}
        killer = threading.Thread(target=kill_when_busy, args=(pids[1], killed))
        killer.start()
        with pytest.raises(WorkerDied, match=r"device 1's worker process died \(killed by signal 9\)"):
            tr.step(x, y)
        killer.join()
        assert wait_gone(pids) == []
        assert max_abs_diff(tr.model.get_values(), before) == 0.0
        assert max_abs_diff(tr.opt_state[0], state[0]) == 0.0 and tr.opt_t == 1


@pytest.mark.slow
def test_ring_checkpoint_resumes_exactly(cnn, digits, tmp_path):
    # The host's optimizer holds the devices' state after every step, so save / load /
    # carry on is the same run as 10 steps in one go, bit for bit (same sums, same order).
    with DataParallelTrainer(cnn.spec, 2, Adam(0.01), strategy="ring") as whole:
        whole.fit(*digits, batch_size=61, steps=10, progress=False)
    with DataParallelTrainer(cnn.spec, 2, Adam(0.01), strategy="ring") as first:
        first.fit(*digits, batch_size=61, steps=5, progress=False)
        first.save(tmp_path / "half.npz")
    with DataParallelTrainer(cnn.spec, 2, Adam(0.01), strategy="ring") as resumed:
        resumed.load(tmp_path / "half.npz")
        resumed.fit(*digits, batch_size=61, steps=5, progress=False)
    assert max_abs_diff(resumed.model.get_values(), whole.model.get_values()) == 0.0
    assert resumed.opt_t == whole.opt_t == 10
