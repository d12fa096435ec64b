"""The local engine: one worker process per simulated GPU, each with its own compiled function.

A "device" here is a process pinned to one CPU core (BLAS limited to one thread), which
rebuilds the model from its spec and compiles its own Theano gradient function, as each
GPU would. Data moves through shared memory, not pickles:

    params  floatX[P]         host -> every device (the broadcast)
    batch   x floatX[B*D], y int32[B]    device i reads samples [a_i, b_i) (split_bounds)
    grads   floatX[N, P]      device i writes row i (the fetch back to the host)

Only tiny control messages go through pipes. Workers die with the pool: on ``close()``,
on any error, on Ctrl-C, and (pipe EOF) if the parent itself dies.
"""
import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from multiprocessing import shared_memory
from multiprocessing.connection import wait

import numpy as np

from .._theano import floatX
from ..errors import DeviceError, WorkerDied
from ..models import build
from .base import Engine, flatten, unflatten
from .pinning import PIN_ENV, cores, pin

__all__ = ["DevicePool"]

_env_lock = threading.Lock()


@contextlib.contextmanager
def _pinned_spawn_env():
    """Environment for starting workers: BLAS pinned, and the caller's ``__main__`` hidden.

    A spawned child normally re-runs the parent's main script, so a script without an
    ``if __name__ == "__main__":`` guard would start pools recursively. Workers need only
    ``mgpu_lab``, so while they start we hide where ``__main__`` came from.
    """
    main = sys.modules["__main__"]
    hidden = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
    with _env_lock:
        saved = {k: os.environ.get(k) for k in PIN_ENV}
        os.environ.update(PIN_ENV)
        for k in hidden:
            setattr(main, k, None) if k == "__spec__" else delattr(main, k)
        try:
            yield
        finally:
            for k, v in hidden.items():
                setattr(main, k, v)
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


class _Buffer:
    """A named shared-memory block seen as a numpy array."""

    def __init__(self, shape, dtype, name=None):
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        self.shm = shared_memory.SharedMemory(name=name, create=name is None, size=nbytes)
        self.array = np.ndarray(shape, dtype=dtype, buffer=self.shm.buf)
        self.spec = (self.shm.name, tuple(shape), np.dtype(dtype).str)

    def close(self, unlink=False):
        self.array = None  # drop the view first, or close() sees exported pointers
        self.shm.close()
        if unlink:
            self.shm.unlink()


# -- the worker (runs in the child process) -----------------------------------------
def _worker_main(device, spec, conn, core):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    pin(core)  # where the system allows it
    try:
        model = build(spec)
        fn = model.loss_and_gradients_function()
        shapes = model.param_shapes
        conn.send(("ready", os.getpid()))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    bufs = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone: so are we
        try:
            if msg[0] == "stop":
                return
            if msg[0] == "attach":  # new shared blocks (the batch buffer grew)
                for b in bufs.values():
                    b.close()
                bufs = {k: _Buffer(s[1], s[2], name=s[0]) for k, s in msg[1].items()}
                conn.send(("ok",))
            elif msg[0] == "step":
                conn.send(("ok",) + _worker_step(device, model, fn, shapes, bufs, *msg[1:]))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


def _worker_step(device, model, fn, shapes, bufs, start, stop):
    """Set params, run the gradient of samples [start, stop), write grads row ``device``."""
    t0 = time.perf_counter()
    for p, v in zip(model.params, unflatten(bufs["params"].array, shapes)):
        p.get_value(borrow=True)[...] = v  # one copy out of shared memory, into Theano's own array
    x = bufs["x"].array.reshape((-1,) + model.input_shape)[start:stop]  # (n_i, *input_shape), a view
    y = bufs["y"].array[start:stop]
    t1 = time.perf_counter()
    loss, *grads = fn(x, y)
    t2 = time.perf_counter()
    flatten(grads, out=bufs["grads"].array[device])  # the fetch back to the host
    t3 = time.perf_counter()
    return float(loss), {"set_params": t1 - t0, "compute": t2 - t1, "fetch": t3 - t2}


def _floats_per_sample(model):
    """Floats per sample, e.g. 3*224*224 for a 224 px RGB image."""
    return int(np.prod(model.input_shape))


# -- the pool (runs in the parent) --------------------------------------------------
class DevicePool(Engine):
    """N simulated GPUs, one worker process each. Use as a context manager; workers never
    outlive it. ``pool.step(values, x, y, update)`` (see :class:`~.base.Engine`); the host
    never compiles the model, it only holds the graph for shapes and checks.
    """

    closes_itself = " (closed explicitly, or after a worker died)"

    def __init__(self, model, n_devices=1, memory_bytes=None, strategy="host",
                 start_timeout=300.0):
        super().__init__(model, n_devices, memory_bytes, strategy)  # checks before any worker starts
        self.shapes = self.model.param_shapes
        self.workers, self.conns, self._bufs = [], [], {}
        self._finalizer = weakref.finalize(self, _shutdown, self.workers, self.conns, self._bufs)
        self.cores = cores()
        self.oversubscribed = self.n_devices > len(self.cores)
        self.spin = self.n_devices < len(self.cores)  # the host has a core of its own: see _wait
        try:
            self._allocate(batch_capacity=max(64, self.n_devices))
            self._start_workers(start_timeout)
        except BaseException:
            self.close()
            raise

    # -- set-up ---------------------------------------------------------------------
    def _allocate(self, batch_capacity):
        P, D = self.model.n_params, _floats_per_sample(self.model)
        old = dict(self._bufs)
        self._bufs.clear()
        self._bufs.update(params=old.get("params") or _Buffer((P,), floatX),
                          grads=old.get("grads") or _Buffer((self.n_devices, P), floatX),
                          x=_Buffer((batch_capacity * D,), floatX),
                          y=_Buffer((batch_capacity,), np.int32))
        for key in ("x", "y"):
            if key in old:
                old[key].close(unlink=True)
        self.capacity = batch_capacity

    def _attach_message(self):
        return ("attach", {k: b.spec for k, b in self._bufs.items()})

    def _start_workers(self, timeout):
        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited BLAS threads or locks
        with _pinned_spawn_env():
            for d in range(self.n_devices):
                parent, child = ctx.Pipe()
                core = self.cores[d % len(self.cores)]
                p = ctx.Process(target=_worker_main, args=(d, self.model.spec, child, core),
                                name=f"mgpu-device-{d}", daemon=True)
                p.start()
                child.close()
                self.workers.append(p)
                self.conns.append(parent)
        self._collect(range(self.n_devices), timeout=timeout)  # "ready": compiled
        self._broadcast(self._attach_message())

    # -- messaging ------------------------------------------------------------------
    def _broadcast(self, msg, devices=None):
        devices = range(self.n_devices) if devices is None else devices
        for d in devices:
            self._send(d, msg)
        return self._collect(devices)

    def _send(self, d, msg):
        try:
            self.conns[d].send(msg)
        except OSError:  # BrokenPipeError: device d's worker is gone
            raise self._died(d) from None

    def _died(self, d):
        """Shut the pool down; the :class:`WorkerDied` to raise for device ``d``."""
        self.workers[d].join(1.0)  # its pipe can close a moment before it is reaped
        code = self.workers[d].exitcode
        self.close()
        return WorkerDied(d, code)

    def _wait(self, waitables, timeout):
        """Block until a reply (or a dead worker) is ready. With a core to spare and no
        deadline, poll instead of sleeping, as CUDA's default does when the GPUs leave the
        host a core: on this VM a process that slept through a step wakes ~0.4 ms late,
        about a third of the pool's overhead at N=1 (mgpu_lab.measure.bench measures it)."""
        if not (self.spin and timeout is None):
            return wait(waitables, timeout=timeout)
        ready = wait(waitables, timeout=0)
        while not ready:
            ready = wait(waitables, timeout=0)
        return ready

    def _collect(self, devices, timeout=None):
        """One reply from each device; a dead worker or an error shuts the pool down."""
        pending, replies, errors = set(devices), {}, {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            waitables = [self.conns[d] for d in pending] + [self.workers[d].sentinel for d in pending]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = self._wait(waitables, left)
            if not ready:
                self.close()
                raise TimeoutError(f"devices {sorted(pending)} did not answer within {timeout:.0f} s")
            for d in list(pending):
                if self.conns[d] in ready and self.conns[d].poll():
                    try:
                        reply = self.conns[d].recv()
                    except (EOFError, OSError):  # a dead worker's pipe reads as EOF
                        raise self._died(d) from None
                    pending.discard(d)
                    (errors if reply[0] == "error" else replies)[d] = reply
                elif self.workers[d].sentinel in ready:
                    raise self._died(d)
        if errors:
            d = min(errors)
            raise DeviceError(d, errors[d][1])
        return replies

    # -- the step: each device computes its split, the host stacks (Engine._exchange) ------
    def _compute(self, values, x, y, bounds, t):
        t0 = time.perf_counter()
        if len(x) > self.capacity:
            self._allocate(batch_capacity=len(x))
            self._broadcast(self._attach_message())
        flatten(values, out=self._bufs["params"].array)  # broadcast: one copy, all devices read it
        self._bufs["x"].array[:x.size] = x.ravel()
        self._bufs["y"].array[:len(y)] = y
        t1 = time.perf_counter()
        try:
            for d, (a, b) in enumerate(bounds):
                self._send(d, ("step", a, b))
            replies = self._collect(range(self.n_devices))
        except (KeyboardInterrupt, OSError):
            self.close()  # workers are mid-step: the only safe state is no workers at all
            raise
        t2 = time.perf_counter()
        losses = [replies[d][1] for d in range(self.n_devices)]
        per_dev = [replies[d][2] for d in range(self.n_devices)]
        t.scatter = t1 - t0
        for phase in ("set_params", "compute", "fetch"):  # the slowest device's, as on GPUs
            setattr(t, phase, max(p[phase] for p in per_dev))
        t.sync = max(0.0, (t2 - t1) - t.set_params - t.compute - t.fetch)
        rows = self._bufs["grads"].array  # (N, P): device d wrote row d
        return losses, [p["compute"] for p in per_dev], [unflatten(r, self.shapes) for r in rows]

    # -- shutdown -------------------------------------------------------------------
    def pids(self):
        return [p.pid for p in self.workers]

    def close(self):
        """Stop every worker (politely, then by force) and free the shared memory."""
        if not self.closed:
            self.closed = True
            self._finalizer()

    def __repr__(self):
        state = "closed" if self.closed else f"{len(self.workers)} workers"
        return f"<DevicePool {self.model.spec.describe()} x{self.n_devices} ({state})>"


def _shutdown(workers, conns, bufs):
    """Stop workers and free shared memory; safe to call twice, from a finalizer too."""
    for c in conns:
        try:
            c.send(("stop",))
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 2.0
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in workers:
        if p.is_alive():
            p.kill()
            p.join(5.0)
    for c in conns:
        c.close()
    for b in bufs.values():
        b.close(unlink=True)
    bufs.clear()
    workers.clear()
    conns.clear()
