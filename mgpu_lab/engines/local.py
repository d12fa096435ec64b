"""The local engine: one worker process per simulated GPU, each with its own compiled function.

A "device" here is a process pinned to one CPU core (BLAS limited to one thread), which
rebuilds the model from its spec and compiles its own Theano gradient function, as each
GPU would. Data moves through shared memory, not pickles:

    params  floatX[P]         host -> every device (the broadcast)
    batch   x floatX[B*D], y int32[B]    device i reads samples [a_i, b_i) (split_bounds)
    grads   floatX[N, P]      device i writes row i (the fetch back to the host)

Only tiny control messages go through pipes. Workers die with the pool: on ``close()``,
on any error, on Ctrl-C, and (pipe EOF) if the parent itself dies.

With ``strategy="ring"`` the host neither stacks nor updates. Each device scales its row
of ``grads`` by n_i / B; the devices run the ring all-reduce of
:mod:`mgpu_lab.collectives` on those rows, each reading its left neighbour's row, with a
one-byte signal to each neighbour per step (a pipe per pair: "my chunk is ready", "I have
read yours"); then every device applies the update (an
:class:`~mgpu_lab.engines.base.OptimizerUpdate`, shipped with the step) to its own copy:

    state     floatX[S, P]    host -> devices: the optimizer's state (S slots: 0 for SGD)
    new       floatX[N, P]    device i writes its updated parameters to row i
    state_out floatX[S, P]    device 0 writes the new optimizer state

The host reads row 0 of ``new``, ``state_out`` and the losses: its parameters and its
optimizer stay the ones a checkpoint saves, and a failed step changes neither.
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
from ..collectives import device_steps, ring_chunks
from ..errors import DeviceError, NonFiniteGradient, WorkerDied
from ..models import build
from .base import Engine, OptimizerUpdate, flatten, unflatten
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
class _Stop(Exception):
    """The parent stopped us (or died) while we waited on a neighbour."""


class _NeighbourGone(Exception):
    """A ring neighbour's link broke: it died. The parent learns which from its sentinel."""


def _worker_main(device, spec, conn, core, links=None):
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
            if msg[0] == "ring":
                conn.send(("ok",) + _worker_ring_step(device, model, fn, shapes, bufs, links, conn,
                                                      *msg[1:]))
            elif msg[0] == "attach":  # new shared blocks (the batch buffer grew)
                for b in bufs.values():
                    b.close()
                bufs = {k: _Buffer(s[1], s[2], name=s[0]) for k, s in msg[1].items()}
                conn.send(("ok",))
            elif msg[0] == "step":
                conn.send(("ok",) + _worker_step(device, model, fn, shapes, bufs, *msg[1:]))
        except _Stop:
            return
        except _NeighbourGone:
            conn.send(("gone",))  # not this device's fault: the dead one is named by the host
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


def _expect(link, parent):
    """One signal byte from a neighbour's ``link``. The parent sends nothing mid-step, so
    if its pipe turns readable it said "stop" or died: leave (EOFError: the neighbour died)."""
    ready = wait([link, parent])
    if link not in ready:
        raise _Stop
    try:
        return link.recv_bytes()
    except (EOFError, OSError):
        raise _NeighbourGone from None


def _signal(link, byte):
    """One signal byte to a neighbour (a broken pipe: the neighbour died)."""
    try:
        link.send_bytes(byte)
    except OSError:
        raise _NeighbourGone from None


def _ring_allreduce(rows, device, links, parent):
    """This device's part of the ring, in place on the shared (N, P) ``rows``.

    At each step of :func:`~mgpu_lab.collectives.device_steps` the left neighbour's
    chunk is read straight from its row. The signals keep it safe: a device tells its
    right neighbour "ready" only after its chunk is written, and writes again only after
    the right neighbour said "read". Returns the seconds spent waiting for the left
    neighbour to finish computing (the first signal): that is sync, not communication.
    """
    N, waited = len(rows), 0.0
    if N == 1:
        return waited
    to_right, from_left = links
    mine, left = rows[device], rows[(device - 1) % N]
    chunks = ring_chunks(rows.shape[1], N)
    for s, (op, _send, recv) in enumerate(device_steps(device, N)):
        if s:
            _expect(to_right, parent)  # right has read what I offered at step s-1
        _signal(to_right, b"s")  # my chunk of step s is in my row
        t0 = time.perf_counter()
        _expect(from_left, parent)  # and left's is in its row
        waited = waited or time.perf_counter() - t0
        a, b = chunks[recv]
        if op == "add":
            mine[a:b] += left[a:b]  # the reduce-scatter: add left's partial sum to mine
        else:
            mine[a:b] = left[a:b]  # the all-gather: copy left's finished chunk
        _signal(from_left, b"r")  # read: left may write that chunk again
    _expect(to_right, parent)  # right has read my last chunk: my row is free for the next step
    return waited


def _worker_ring_step(device, model, fn, shapes, bufs, links, parent, start, stop, weight,
                      rule, n_state):
    """Compute, scale by n_i / B, all-reduce with the neighbours, update this device's copy.

    Returns (loss, seconds per phase, why the update was refused or None).
    """
    loss, times = _worker_step(device, model, fn, shapes, bufs, start, stop)
    rows = bufs["grads"].array
    t0 = time.perf_counter()
    rows[device] *= np.dtype(floatX).type(weight)  # (n_i / B) g_i, as stack_gradients weighs it
    waited = _ring_allreduce(rows, device, links, parent)
    t1 = time.perf_counter()
    refused = None
    if rule is not None:
        opt = rule.optimizer  # this step's learning rate, the host's t; state from shared memory
        # views: an update never writes into its inputs (n_state = 0: a fresh optimizer)
        opt.state = [unflatten(bufs["state"].array[k], shapes) for k in range(n_state)]
        try:
            new = rule(unflatten(bufs["params"].array, shapes), unflatten(rows[device], shapes), loss)
        except NonFiniteGradient as e:  # every device sees the same gradient: all refuse
            refused = str(e)
        else:
            flatten(new, out=bufs["new"].array[device])
            if device == 0:
                for k, slot in enumerate(opt.state):
                    flatten(slot, out=bufs["state_out"].array[k])
    times.update(exchange=t1 - t0 - waited, update=time.perf_counter() - t1)
    return loss, times, refused


def _floats_per_sample(model):
    """Floats per sample, e.g. 3*224*224 for a 224 px RGB image."""
    return int(np.prod(model.input_shape))


# -- the pool (runs in the parent) --------------------------------------------------
class DevicePool(Engine):
    """N simulated GPUs, one worker process each. Use as a context manager; workers never
    outlive it. ``pool.step(values, x, y, update)`` (see :class:`~.base.Engine`); the host
    never compiles the model, it only holds the graph for shapes and checks.
    """

    strategies = ("host", "ring")
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
        self._slots = {}  # optimizer class -> state slots (the ring's state buffers)
        try:
            self._allocate(batch_capacity=max(64, self.n_devices))
            self._start_workers(start_timeout)
        except BaseException:
            self.close()
            raise

    # -- set-up ---------------------------------------------------------------------
    def _allocate(self, batch_capacity=None, state_slots=None):
        """(Re)allocate the batch buffers for ``batch_capacity`` samples, or the ring's
        optimizer-state buffers for ``state_slots`` slots; the others are kept."""
        P, D, N = self.model.n_params, _floats_per_sample(self.model), self.n_devices
        shapes = {"params": (P,), "grads": (N, P)}
        if self.strategy == "ring":
            shapes["new"] = (N, P)
        if batch_capacity is not None:
            shapes.update(x=(batch_capacity * D,), y=(batch_capacity,))
            self.capacity = batch_capacity
        if state_slots is not None:
            shapes.update(state=(state_slots, P), state_out=(state_slots, P))
        for key, shape in shapes.items():
            old = self._bufs.get(key)
            if old is None or old.array.shape != shape:
                self._bufs[key] = _Buffer(shape, np.int32 if key == "y" else floatX)
                if old is not None:
                    old.close(unlink=True)

    def _attach_message(self):
        return ("attach", {k: b.spec for k, b in self._bufs.items()})

    def _start_workers(self, timeout):
        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited BLAS threads or locks
        N = self.n_devices
        ring = [ctx.Pipe() for _ in range(N)] if self.strategy == "ring" and N > 1 else None
        with _pinned_spawn_env():
            for d in range(N):
                parent, child = ctx.Pipe()
                core = self.cores[d % len(self.cores)]
                links = (ring[d][0], ring[(d - 1) % N][1]) if ring else None  # (to d+1, from d-1)
                p = ctx.Process(target=_worker_main, args=(d, self.model.spec, child, core, links),
                                name=f"mgpu-device-{d}", daemon=True)
                p.start()
                child.close()
                self.workers.append(p)
                self.conns.append(parent)
        for a, b in ring or ():  # only the two neighbours hold a link: one dying is EOF to the other
            a.close()
            b.close()
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
                    if reply[0] == "error" and pending and self.strategy == "ring":
                        self.close()  # its neighbours wait in the ring for it: stop them all
                        raise DeviceError(d, reply[1])
                elif self.workers[d].sentinel in ready:
                    raise self._died(d)
        if errors:
            d = min(errors)
            raise DeviceError(d, errors[d][1])
        gone = [d for d, r in replies.items() if r[0] == "gone"]
        if gone:  # a neighbour broke the ring but no death was seen (should not happen)
            self.close()
            raise DeviceError(gone[0], "lost its ring neighbour in the middle of a step")
        return replies

    # -- the step: each device computes its split, then the host stacks (Engine._exchange)
    #    or, with strategy="ring", the devices all-reduce and update (_exchange below) -----
    def _compute(self, values, x, y, bounds, update, t):
        t0 = time.perf_counter()
        if len(x) > self.capacity:
            self._allocate(batch_capacity=len(x))
            self._broadcast(self._attach_message())
        flatten(values, out=self._bufs["params"].array)  # broadcast: one copy, all devices read it
        self._bufs["x"].array[:x.size] = x.ravel()
        self._bufs["y"].array[:len(y)] = y
        messages = self._ring_messages(bounds, update) if self.strategy == "ring" else [
            ("step", a, b) for a, b in bounds]
        t1 = time.perf_counter()
        try:
            for d, msg in enumerate(messages):
                self._send(d, msg)
            replies = self._collect(range(self.n_devices))
        except (KeyboardInterrupt, OSError):
            self.close()  # workers are mid-step: the only safe state is no workers at all
            raise
        t2 = time.perf_counter()
        losses = [replies[d][1] for d in range(self.n_devices)]
        per_dev = [replies[d][2] for d in range(self.n_devices)]
        t.scatter = t1 - t0
        ring = self.strategy == "ring"
        phases = ("set_params", "compute", "fetch") + (("exchange", "update") if ring else ())
        for phase in phases:  # the slowest device's, as on GPUs
            setattr(t, phase, max(p[phase] for p in per_dev))
        t.sync = max(0.0, (t2 - t1) - sum(getattr(t, p) for p in phases))
        if ring:  # what the devices said about the update: None, or why they refused it
            return losses, [p["compute"] for p in per_dev], [replies[d][3] for d in range(self.n_devices)]
        rows = self._bufs["grads"].array  # (N, P): device d wrote row d
        return losses, [p["compute"] for p in per_dev], [unflatten(r, self.shapes) for r in rows]

    def _ring_messages(self, bounds, update):
        """One "ring" message per device: its split, its weight n_i / B, the update rule.

        The optimizer's state goes through shared memory (``state``), not the pipes.
        """
        if update is not None and not isinstance(update, OptimizerUpdate):
            raise TypeError(f"DevicePool(strategy='ring') runs the update on every device, so it "
                            f"must travel to them: pass an OptimizerUpdate(optimizer), not "
                            f"{update!r}")
        rule, n_state = None, 0
        if update is not None:
            kind = type(update.optimizer)
            if kind not in self._slots:
                self._slots[kind] = update.n_slots()
            slots = self._slots[kind]
            if slots and ("state" not in self._bufs or len(self._bufs["state"].array) < slots):
                self._allocate(state_slots=slots)
                self._broadcast(self._attach_message())
            n_state = len(update.optimizer.state)
            for k, slot in enumerate(update.optimizer.state):
                flatten(slot, out=self._bufs["state"].array[k])
            rule = update.for_devices()
        sizes = np.array([b - a for a, b in bounds], dtype=np.float64)
        weights = (sizes / sizes.sum()).astype(floatX)  # as stack_gradients computes them
        return [("ring", a, b, float(w), rule, n_state) for (a, b), w in zip(bounds, weights)]

    def _exchange(self, values, local, sizes, loss, update, t):
        """Ring: the devices have all-reduced and updated; the host reads device 0's result."""
        if self.strategy != "ring":
            return super()._exchange(values, local, sizes, loss, update, t)
        t0 = time.perf_counter()
        grads = [g.copy() for g in unflatten(self._bufs["grads"].array[0], self.shapes)]
        if update is None:
            return grads, None
        refused = [r for r in local if r]
        if refused:  # nothing was committed: parameters and optimizer state are as before
            raise NonFiniteGradient(refused[0])
        new = [v.copy() for v in unflatten(self._bufs["new"].array[0], self.shapes)]
        slots = self._slots[type(update.optimizer)]
        update.commit([[a.copy() for a in unflatten(self._bufs["state_out"].array[k], self.shapes)]
                       for k in range(slots)])
        t.update += time.perf_counter() - t0
        return grads, new

    def device_parameters(self):
        """(N, P) copy: every device's parameters after the last ring step with an update."""
        if self.strategy != "ring":
            raise ValueError("only strategy='ring' keeps a parameter copy per device")
        return self._bufs["new"].array.copy()

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
