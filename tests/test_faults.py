"""Faults: killed workers, exceptions inside workers, Ctrl-C, a dead parent, a closed pool.

Every promise here is about processes, so every test checks the same end state too: no
worker process outlives the pool (``gone``), whatever went wrong.
"""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

from mgpu_lab import models
from mgpu_lab.engines.local import DevicePool
from mgpu_lab.engines.serial import SerialEngine
from mgpu_lab.errors import DeviceError, EngineClosed, WorkerDied
from mgpu_lab.optim import Momentum
from mgpu_lab.trainer import DataParallelTrainer

pytestmark = pytest.mark.integration  # worker processes (tests/README.md: tiers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A 2-device CNN step on 40,000 8x8 images computes for ~0.5-1 s on one core: long enough
# to kill a worker in the middle of it, short enough to keep the test quick.
BIG = 40_000


def gone(pid):
    """True once ``pid`` has exited (a zombie counts: it runs no code any more)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def worker_pids():
    """Pids of this process's live spawned children (workers; not the resource tracker, and
    not the workers of the book's build, which runs beside the tests in a process of its own)."""
    found = set()
    for c in psutil.Process().children():
        try:
            if "spawn_main" in " ".join(c.cmdline()) and not gone(c.pid):
                found.add(c.pid)
        except psutil.Error:  # it ended while we looked
            pass
    return found


def wait_gone(pids, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if not gone(p)]


def big_batch(n=BIG, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 1, 8, 8).astype(np.float32), rng.randint(0, 10, n).astype(np.int32)


def kill_when_busy(pid, killed, busy_cpu_s=0.05, give_up_s=60.0):
    """SIGKILL ``pid`` once it has used ``busy_cpu_s`` of CPU: an idle worker blocks in
    ``recv`` and uses none, so from then on it is certainly in the middle of a step."""
    proc = psutil.Process(pid)
    base = sum(proc.cpu_times()[:2])
    deadline = time.monotonic() + give_up_s
    while time.monotonic() < deadline:
        if sum(proc.cpu_times()[:2]) - base >= busy_cpu_s:
            os.kill(pid, signal.SIGKILL)
            killed["at"] = time.monotonic()
            return
        time.sleep(0.005)


def with_worker_spec(model, spec):
    """``model`` in the parent, ``spec`` in the workers: a stand-in for worker code that
    fails where the parent's does not (workers rebuild the model from ``model.spec``)."""
    model.spec = spec
    return model


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_mid_step_names_the_device_and_keeps_the_parameters(cnn):
    x, y = big_batch()
    with DataParallelTrainer(cnn.spec, 2, Momentum(0.05), engine="local") as tr:
        tr.step(x, y)  # starts the pool and grows its batch buffer
        pool, before = tr.engine, tr.model.get_values()
        pids = pool.pids()
        state_before = [[a.copy() for a in slot] for slot in tr.opt_state]
        killed = {}
        killer = threading.Thread(target=kill_when_busy, args=(pids[1], killed))
        killer.start()
        died = r"device 1's worker process died \(killed by signal 9\)"
        with pytest.raises(WorkerDied, match=died) as err:
            tr.step(x, y)
        raised_after = time.monotonic() - killed["at"]
        killer.join()
        assert err.value.device == 1
        assert raised_after < 10.0, f"the pool took {raised_after:.1f} s to notice"  # the bound
        assert pool.closed and wait_gone(pids) == []  # no other worker is left alive
        for a, b in zip(tr.model.get_values(), before):
            assert np.array_equal(a, b)  # parameters are those before the step
        for slot, slot_before in zip(tr.opt_state, state_before):
            assert all(np.array_equal(a, b) for a, b in zip(slot, slot_before))
        assert tr.step_count == 1 and len(tr.history) == 1
        print(f"WorkerDied raised {raised_after * 1000:.0f} ms after the SIGKILL")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_trainer_survives_dead_workers_and_restarts_its_pool(cnn, digits):
    x, y = digits[0][:64], digits[1][:64]
    with DataParallelTrainer(cnn.spec, 2, Momentum(0.05), engine="local") as tr:
        tr.step(x, y)
        first = tr.engine
        pids = first.pids()
        os.kill(pids[0], signal.SIGKILL)  # killed between steps, while idle
        assert wait_gone([pids[0]]) == []
        before = tr.model.get_values()
        with pytest.raises(WorkerDied, match="device 0's worker process died"):
            tr.step(x, y)
        assert wait_gone(pids) == []  # the other worker was stopped too
        assert all(np.array_equal(a, b) for a, b in zip(tr.model.get_values(), before))
        with pytest.raises(EngineClosed, match="closed"):
            first.step(before, x, y)
        loss = tr.step(x, y)  # the next step starts a fresh pool
        assert tr.engine is not first and set(tr.engine.pids()).isdisjoint(pids)
        assert np.isfinite(loss) and tr.step_count == 2
        new_pids = tr.engine.pids()
    assert wait_gone(new_pids) == []


@pytest.mark.slow
def test_exception_at_worker_start_carries_the_worker_traceback():
    bad = models.ModelSpec.of("mlp", n_in=64, hidden=(64,), not_an_argument=1)
    model = with_worker_spec(models.mlp(n_in=64, hidden=(64,)), bad)
    before = worker_pids()
    with pytest.raises(DeviceError, match="device 0 raised an exception") as err:
        DevicePool(model, 2)
    tb = err.value.remote_traceback
    assert "Traceback (most recent call last)" in tb and "in _serve" in tb  # the worker's loop
    assert "unexpected keyword argument 'not_an_argument'" in tb
    assert worker_pids() <= before  # no worker of the failed pool is left


@pytest.mark.slow
def test_exception_in_a_step_carries_the_worker_traceback_and_pool_closes_cleanly():
    # parent: 2,410 parameters, 64 inputs; workers rebuild an MLP of the same 2,410
    # parameters but 69 inputs, and cannot reshape the batch in shared memory into it
    model = with_worker_spec(models.mlp(n_in=64, hidden=(32,)), models.mlp(n_in=69, hidden=(30,)).spec)
    x = np.zeros((8, 64), np.float32)
    y = np.zeros(8, np.int32)
    with DevicePool(model, 2) as pool:
        pids = pool.pids()
        with pytest.raises(DeviceError, match="device 0 raised an exception") as err:
            pool.step(model.get_values(), x, y)
        tb = err.value.remote_traceback
        assert "in step" in tb and "ValueError" in tb and "reshape" in tb
    assert pool.closed and wait_gone(pids) == []
    with pytest.raises(EngineClosed, match="DevicePool is closed"):
        pool.step(model.get_values(), x, y)


def test_a_closed_serial_engine_refuses_work_too(cnn):
    engine = SerialEngine(cnn.spec, 2)
    engine.close()
    with pytest.raises(EngineClosed, match="this SerialEngine is closed; create a new one"):
        engine.step(cnn.get_values(), np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int32))


def run_script(body, **popen):
    """Start ``python -c body`` in its own process group (as a shell starts a job)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(body)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


# Trains the digits MLP on 2 devices "forever"; prints the worker pids once the pool runs.
FIT_FOREVER = """
    import sys
    from mgpu_lab import models
    from mgpu_lab.data import load_digits
    from mgpu_lab.optim import Momentum
    from mgpu_lab.trainer import DataParallelTrainer
    x, y = load_digits(flat=True)
    tr = DataParallelTrainer(models.mlp(n_in=64, hidden=(64,)), 2, Momentum(0.05))
    tr.step(x[:64], y[:64])
    pool = tr.engine
    print("pids", *pool.pids(), flush=True)
    try:
        tr.fit(x, y, batch_size=64, steps=10**9, progress=False)
    except KeyboardInterrupt:
        ok = pool.closed and len(tr.history) == tr.step_count
        print("KeyboardInterrupt after", tr.step_count, "steps; pool closed:", ok, flush=True)
        sys.exit(130)
"""


def started_pids(proc, timeout=120):
    """The worker pids the script prints (its first line), or fail with its stderr."""
    line = proc.stdout.readline()
    if not line.startswith("pids"):
        proc.kill()
        pytest.fail(f"the script did not start: {line!r}\n{proc.stderr.read()[-3000:]}")
    return [int(p) for p in line.split()[1:]]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_during_fit_raises_keyboardinterrupt_and_stops_every_worker():
    proc = run_script(FIT_FOREVER)
    try:
        pids = started_pids(proc)
        time.sleep(0.5)  # well inside fit: a step of this MLP takes a few ms
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "KeyboardInterrupt after" in out and "pool closed: True" in out
    assert wait_gone(pids) == []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_workers_exit_when_the_parent_is_killed():
    proc, pids = run_script(FIT_FOREVER), []
    try:
        pids = started_pids(proc)
        proc.kill()  # SIGKILL: no finalizer, no atexit; only the pipes' EOF is left
        proc.wait(timeout=30)
        assert wait_gone(pids, seconds=20) == []
    finally:
        for p in [proc.pid] + pids:
            if not gone(p):
                os.kill(p, signal.SIGKILL)
