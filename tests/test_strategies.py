"""Strategies as objects: each algorithm is written once, on a link, and runs on any
transport. Here a transport of threads and queues checks the algorithms against the numpy
definitions (collectives.py) bit for bit and counts their bytes; then the real pool runs
every strategy and ends where one device ends (MPI: tests/test_mpi.py)."""
import queue
import threading
import time

import numpy as np
import pytest
from conftest import max_abs_diff
from test_faults import big_batch, kill_when_busy, wait_gone

from mgpu_lab import collectives as C
from mgpu_lab.engines import strategies as S
from mgpu_lab.engines.local import DevicePool
from mgpu_lab.errors import WorkerDied
from mgpu_lab.gradients import split_weights, stack_gradients
from mgpu_lab.models import mlp
from mgpu_lab.optim import SGD, Adam, Momentum
from mgpu_lab.predict.algorithms import bytes_per_device
from mgpu_lab.trainer import DataParallelTrainer


# -- a third transport, for the tests: threads and queues ---------------------------------
class ThreadLink:
    """Device ``rank``'s end of an in-process transport; counts the bytes it moves."""

    def __init__(self, rank, boxes):
        self.rank, self.size, self.boxes, self.sent, self.received = rank, len(boxes), boxes, 0, 0

    def sendrecv(self, send, dest, recv, source, add=False):
        if send is not None:
            self.boxes[dest][self.rank].put(send.copy())
            self.sent += send.nbytes
        if recv is not None:
            got = self.boxes[self.rank][source].get(timeout=10)
            if add:
                recv += got
            else:
                recv[...] = got
            self.received += recv.nbytes


def run_on_threads(n, work):
    """``work(link)`` on n threads, one link each; returns the links (after all finished)."""
    boxes = [[queue.Queue() for _ in range(n)] for _ in range(n)]
    links = [ThreadLink(r, boxes) for r in range(n)]
    errors = []

    def body(link):
        try:
            work(link)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=body, args=(link,)) for link in links]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return links


def arrays(n, P, seed=0):
    return [np.random.RandomState(seed + i).randn(P).astype(np.float32) for i in range(n)]


@pytest.mark.parametrize("n, P", [(1, 5), (2, 7), (3, 1001), (4, 64), (5, 3)])
def test_ring_allreduce_is_the_simulated_ring_bit_for_bit(n, P):
    data = arrays(n, P)
    bufs = [a.copy() for a in data]
    links = run_on_threads(n, lambda link: S.ring_allreduce(link, bufs[link.rank]))
    sim = C.simulate_ring_allreduce(data)
    for r in range(n):
        assert np.array_equal(bufs[r], sim.result[r])
        assert links[r].sent == sim.bytes_sent[r]


@pytest.mark.parametrize("n, P", [(2, 8), (3, 1001), (4, 64)])
def test_reduce_scatter_then_all_gather_moves_the_rings_bytes(n, P):
    """The sharded optimizer's two collectives: device r ends the first with the sum of
    its own shard (owned_chunk), the second with everything; bytes = 2(N-1)/N * 4P."""
    data = arrays(n, P, seed=10)
    bufs = [a.copy() for a in data]
    total = np.sum(data, axis=0, dtype=np.float32)
    chunks = C.ring_chunks(P, n)

    def work(link):
        buf = bufs[link.rank]
        S.reduce_scatter(link, buf)
        a, b = chunks[S.owned_chunk(link.rank, n)]
        np.testing.assert_allclose(buf[a:b], total[a:b], rtol=1e-6, atol=1e-6)
        S.all_gather(link, buf)
    links = run_on_threads(n, work)
    for r in range(n):
        np.testing.assert_allclose(bufs[r], total, rtol=1e-6, atol=1e-6)
    if P % n == 0:
        assert all(link.sent == C.ring_bytes_per_device(P, n) for link in links)


class Dev:
    """What a strategy's on_device needs of a device, without an update."""

    def __init__(self, grad):
        self.grad, self.n_params, self.has_update = grad, grad.size, False

    def scale_gradient(self):
        pass

    def finite(self, a, b):
        return bool(np.isfinite(self.grad[a:b]).all())

    def refuse_if_not_finite(self, a, b):
        assert self.finite(a, b)

    def update_range(self, a, b):
        pass


@pytest.mark.parametrize("n, G", [(4, 2), (6, 2), (6, 3), (4, 1), (4, 4), (8, 2)])
def test_hierarchical_sums_on_every_device_and_moves_the_models_bytes(n, G):
    """Reduce-scatter in the node, one ring per local rank across the nodes, all-gather in
    the node: every device ends with the sum, and sends (and receives) what the cost model
    charges, 2(G-1)/G * 4P inside the node plus 2(K-1)/K * 4P/G across (K = N/G nodes)."""
    P = 240  # divisible by every G and G*K here: the formula is exact
    data = arrays(n, P, seed=20)
    devs = [Dev(a.copy()) for a in data]
    strategy = S.HierarchicalAllReduce(devices_per_node=G)
    links = run_on_threads(n, lambda link: strategy.on_device(link, devs[link.rank]))
    total = np.sum(data, axis=0, dtype=np.float32)
    for d in devs:
        np.testing.assert_allclose(d.grad, total, rtol=1e-6, atol=1e-6)
    expected = bytes_per_device("hierarchical", 4 * P, n, G)  # the cost model's formula
    assert all(link.sent == link.received == expected for link in links)


def test_split_weights_are_written_once_and_agree():
    sizes = [21, 20, 20]
    w = split_weights(sizes)
    assert w.dtype == np.float32 and np.isclose(w.sum(), 1)
    for s in (S.HostGather(), S.RingAllReduce(), S.ShardedOptimizer(), S.HierarchicalAllReduce(1)):
        assert np.array_equal(s.weights(sizes), w)
    g = [[np.full(3, float(i), np.float32)] for i in range(3)]
    manual = sum(np.float32(wi) * gi[0] for wi, gi in zip(w, g))
    np.testing.assert_allclose(stack_gradients(g, sizes)[0], manual, rtol=1e-7)


def test_the_registry_and_bad_settings():
    assert list(S.STRATEGIES) == ["host", "ring", "sharded", "hierarchical", "ring16"]
    assert isinstance(S.get_strategy("sharded"), S.ShardedOptimizer)
    ring = S.RingAllReduce()
    assert S.get_strategy(ring) is ring
    with pytest.raises(ValueError, match="unknown strategy 'tree'; choose one of host, ring, "
                                         "sharded, hierarchical, ring16"):
        S.get_strategy("tree")
    for bad in (0, -1, True, "2", 1.5):
        with pytest.raises(ValueError, match="devices_per_node must be a positive integer"):
            S.HierarchicalAllReduce(devices_per_node=bad)
    with pytest.raises(ValueError, match=r"6 devices do not make whole nodes of "
                                         r"devices_per_node=4; use a G that divides 6 \(1, 2, 3, 6\)"):
        S.HierarchicalAllReduce(4).check(6)
    with pytest.raises(ValueError, match="needs devices_per_node=G"):
        S.HierarchicalAllReduce().for_engine(None, None)
    assert S.HierarchicalAllReduce().for_engine(None, lambda: 3).devices_per_node == 3


# -- the real pool ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    """A small MLP on the digits (1,210 params: not a multiple of 3 or 4)."""
    return mlp(hidden=(16,), seed=0)


@pytest.fixture(scope="module")
def flat_digits(digits):
    return digits[0].reshape(len(digits[0]), -1), digits[1]


def train(spec, n, opt, data, strategy="host", engine="local", steps=20, **kw):
    with DataParallelTrainer(spec, n, opt, engine=engine, strategy=strategy, **kw) as tr:
        tr.fit(*data, batch_size=61, steps=steps, progress=False)  # 61: uneven splits
        memory = tr.engine.device_memory()
    return tr, memory


OPTIMIZERS = {"sgd": lambda: SGD(0.1), "momentum": lambda: Momentum(0.05), "adam": lambda: Adam(0.01)}


@pytest.fixture(scope="module")
def serial(small, flat_digits):
    return {k: train(small.spec, 1, make(), flat_digits, engine="serial")[0]
            for k, make in OPTIMIZERS.items()}


def _quick_or_slow(*quick):
    """Parameters: the ``quick`` ones run in make test, the others only in make test-all."""
    return lambda *p: pytest.param(*p, marks=() if p in quick else pytest.mark.slow)


_sharded = _quick_or_slow((3, "adam"))


@pytest.mark.integration
@pytest.mark.parametrize("n, opt", [_sharded(n, o) for n in (2, 3, 4) for o in OPTIMIZERS])
def test_sharded_ends_at_the_serial_parameters(small, flat_digits, serial, n, opt):
    tr, memory = train(small.spec, n, OPTIMIZERS[opt](), flat_digits, "sharded")
    ref = serial[opt]
    assert max_abs_diff(tr.model.get_values(), ref.model.get_values()) <= 1e-6
    for mine, theirs in zip(tr.opt_state, ref.opt_state):
        assert max_abs_diff(mine, theirs) <= 1e-6
    P, slots = small.n_params, OPTIMIZERS[opt]().slots
    shards = [b - a for a, b in C.ring_chunks(P, n)]
    assert sorted(m["optimizer"] for m in memory) == sorted(4 * slots * s for s in shards)


@pytest.mark.integration
@pytest.mark.parametrize("n, G", [(4, 2), pytest.param(6, 2, marks=pytest.mark.slow)])
def test_hierarchical_ends_at_the_host_parameters(small, flat_digits, serial, n, G):
    tr, _ = train(small.spec, n, Adam(0.01), flat_digits, "hierarchical", devices_per_node=G)
    assert max_abs_diff(tr.model.get_values(), serial["adam"].model.get_values()) <= 1e-6


@pytest.mark.integration
@pytest.mark.slow
def test_device_memory_adam_host_ring_sharded(small, flat_digits):
    """What each device holds, counted from its arrays: under 'sharded' the optimizer's
    state is 1/N of the ring's (within one shard's rounding); the host gather keeps it on
    the host, so its devices hold none."""
    n, P = 4, small.n_params
    held = {s: train(small.spec, n, Adam(0.01), flat_digits, s, steps=2)[1]
            for s in ("host", "ring", "sharded")}
    for s, memory in held.items():
        assert len(memory) == n
        assert all(m["parameters"] == m["gradients"] == 4 * P for m in memory)
    assert [m["optimizer"] for m in held["host"]] == [0] * n
    assert [m["optimizer"] for m in held["ring"]] == [2 * 4 * P] * n
    for m in held["sharded"]:
        assert abs(m["optimizer"] - 2 * 4 * P / n) <= 2 * 4  # one float per slot of rounding


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("first, then", [("sharded", "host"), ("host", "sharded"),
                                         ("ring", "hierarchical")])
def test_checkpoints_resume_under_any_strategy(small, flat_digits, serial, first, then, tmp_path):
    """The host always holds the whole optimizer state (a sharded run's shards are gathered
    into it), so every strategy resumes every other's checkpoint."""
    tr, _ = train(small.spec, 2, Adam(0.01), flat_digits, first, steps=10)
    tr.save(tmp_path / "half.npz")
    extra = {"devices_per_node": 1} if then == "hierarchical" else {}
    with DataParallelTrainer(small.spec, 2, Adam(0.01), strategy=then, **extra) as resumed:
        resumed.load(tmp_path / "half.npz")
        resumed.fit(*flat_digits, batch_size=61, steps=10, progress=False)
        assert max_abs_diff(resumed.model.get_values(), serial["adam"].model.get_values()) <= 1e-6


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("strategy, kw", [("sharded", {}), ("hierarchical", {"devices_per_node": 2})])
def test_a_worker_killed_mid_step_stops_the_step_and_the_next_one_starts_afresh(cnn, strategy, kw):
    """The devices hold the state, so a dead device takes it with it: the trainer goes
    back to its last snapshot (step 0 here: snapshot_every=2, killed in step 2), says how
    many steps were lost, and the next step starts a fresh pool from it."""
    x, y = big_batch()
    with DataParallelTrainer(cnn.spec, 4, Adam(0.01), strategy=strategy, snapshot_every=2, **kw) as tr:
        initial = tr.model.get_values()
        tr.step(x, y)
        pids = tr.engine.pids()
        killed = {}
        killer = threading.Thread(target=kill_when_busy, args=(pids[2], killed))
        killer.start()
        with pytest.raises(WorkerDied, match=r"device 2's worker process died.*snapshot of "
                                             r"step 0: 1 step\(s\) lost") as err:
            tr.step(x, y)
        raised_after = time.monotonic() - killed["at"]
        killer.join()
        assert raised_after < 10.0, f"the pool took {raised_after:.1f} s to notice"  # the bound
        assert wait_gone(pids) == []  # no worker is left
        assert err.value.steps_lost == 1 and tr.step_count == 0 and tr.history == []
        assert max_abs_diff(tr.model.get_values(), initial) == 0.0 and tr.opt_t == 0
        assert all(not a.any() for slot in tr.opt_state for a in slot)  # Adam's state at step 0
        assert np.isfinite(tr.step(x, y)) and tr.opt_t == 1  # a fresh pool, from the snapshot
        assert not set(tr.engine.pids()) & set(pids)


@pytest.mark.integration
@pytest.mark.slow
def test_a_lost_engine_costs_the_steps_since_the_snapshot(small, flat_digits, serial):
    """A lost engine costs the steps since the snapshot (step 9 of 10 here, snapshot_every=3),
    and training from the snapshot ends where the serial engine ends: the batches depend
    only on the global step, so the lost step is recomputed exactly."""
    with DataParallelTrainer(small.spec, 2, Adam(0.01), strategy="ring", snapshot_every=3) as tr:
        tr.fit(*flat_digits, batch_size=61, steps=10, progress=False)
        tr.engine.close()  # as if a device had died between steps
        with pytest.warns(UserWarning, match="last 1 step"):
            tr.fit(*flat_digits, batch_size=61, steps=11, progress=False)
        assert tr.step_count == 20
        assert max_abs_diff(tr.model.get_values(), serial["adam"].model.get_values()) <= 1e-6


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["ring", "sharded"])
def test_a_nan_gradient_is_refused_alike_and_an_overflow_goes_back_to_the_snapshot(
        small, flat_digits, strategy):
    """A NaN in one device's split: every device refuses before changing anything, the pool
    stays up. An update that overflows in place: DeviceStateLost, back to the snapshot."""
    x, y = flat_digits[0][:61].copy(), flat_digits[1][:61]
    with DataParallelTrainer(small.spec, 2, Momentum(0.05), strategy=strategy) as tr:
        tr.step(x, y)
        before, pids = tr.model.get_values(), tr.engine.pids()
        bad = x.copy()
        bad[40:] = 3e38  # device 1's split only: its loss and gradient overflow
        with pytest.raises(S_errors().NonFiniteGradient, match="NaN or infinite; parameters left untouched"):
            tr.step(bad, y)
        assert tr.engine.pids() == pids and tr.opt_t == 1  # same pool, nothing changed
        assert max_abs_diff(tr.model.get_values(), before) == 0.0
        tr.optimizer = Momentum(1e300)
        with pytest.raises(S_errors().DeviceStateLost, match=r"snapshot of step 0: 1 step\(s\) lost"):
            tr.step(x, y)
        assert tr.step_count == 0 and tr.opt_t == 0


def S_errors():
    from mgpu_lab import errors
    return errors


@pytest.mark.integration
def test_the_memory_check_counts_the_state_a_strategy_keeps_on_a_device(cnn, digits):
    """256 KiB per device: 23 samples of the digits CNN fit a device that holds no
    optimizer state (host gather), not one that also holds momentum's velocity (ring)."""
    from mgpu_lab.errors import DeviceOutOfMemory
    from mgpu_lab.predict import memory
    x, y = digits[0][:46], digits[1][:46]
    cap = 256 * 1024
    assert memory.estimate(cnn, 23)["total"] <= cap < memory.estimate(cnn, 23, "momentum")["total"]
    with DataParallelTrainer(cnn.spec, 2, Momentum(0.05), memory_bytes=cap) as host:
        assert np.isfinite(host.step(x, y))
    largest = memory.max_batch_size(cnn, cap, 2, "momentum") // 2
    with DataParallelTrainer(cnn.spec, 2, Momentum(0.05), strategy="ring", memory_bytes=cap) as ring:
        with pytest.raises(DeviceOutOfMemory, match=f"the largest split that fits is {largest} samples"):
            ring.step(x, y)
        assert ring.step_count == 0 and np.isfinite(ring.step(x[:2 * largest], y[:2 * largest]))


@pytest.mark.integration
def test_pool_refuses_hierarchical_without_nodes(small):
    with pytest.raises(ValueError, match="needs devices_per_node=G"):
        DevicePool(small.spec, 4, strategy="hierarchical")
    with pytest.raises(ValueError, match="4 devices do not make whole nodes of devices_per_node=3"):
        DataParallelTrainer(small.spec, 4, strategy="hierarchical", devices_per_node=3)
