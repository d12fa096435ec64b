"""The local engine: one worker process per simulated GPU, each with its own compiled function.

A "device" here is a process pinned to one CPU core (BLAS limited to one thread), which
rebuilds the model from its spec and compiles its own Theano gradient function, as each
GPU would (the worker's side: :mod:`mgpu_lab.engines.worker`). Data moves through shared
memory, not pickles; only tiny control messages go through pipes. Workers die with the
pool: on ``close()``, on any error, on Ctrl-C, and (pipe EOF) if the parent itself dies.

One step: the host writes the batch (and, for the host gather, the parameters every
replica views); each device computes its split and runs ``strategy.on_device`` over its
:class:`~mgpu_lab.engines.worker.ShmLink`; the host gather's host then stacks and updates.
Under the other strategies the devices keep their parameters and optimizer state between
steps (:class:`~mgpu_lab.engines.device.Device`): the host sees them only when it asks
(:meth:`DevicePool.state_dict`), and loads them only when given (``values``, or an
update's ``state``, or :meth:`DevicePool.load_state_dict`).
"""
import contextlib
import multiprocessing as mp
import os
import sys
import threading
import time
import weakref
from multiprocessing.connection import wait

import numpy as np

from .._theano import floatX
from ..errors import DeviceError, NonFiniteGradient, WorkerDied
from ..errors import DeviceStateLost
from ..models import fold
from .base import Engine, flatten, unflatten
from .pinning import PIN_ENV, cores
from .strategies import HostView
from .worker import Buffer, mailbox_floats, worker_main

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


def _floats_per_sample(model):
    """Floats per sample, e.g. 3*224*224 for a 224 px RGB image."""
    return int(np.prod(model.input_shape))


class DevicePool(Engine):
    """N simulated GPUs, one worker process each. Use as a context manager; workers never
    outlive it. ``pool.step(values, x, y, update)`` (see :class:`~.base.Engine`); the host
    never compiles the model, it only holds the graph for shapes and checks.
    """

    links = True
    closes_itself = " (closed explicitly, or after a worker died)"

    def __init__(self, model, n_devices=1, memory_bytes=None, strategy="host",
                 devices_per_node=None, start_timeout=300.0):
        super().__init__(model, n_devices, memory_bytes, strategy, devices_per_node)  # checks first
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
    def _static(self):
        """The blocks that live as long as the pool: what the strategy moves through
        shared memory (the host gather's parameters and gradients, or the mailboxes)."""
        P, N = self.model.n_params, self.n_devices
        if self.strategy.updates_on_host:
            shapes = {"params": (P,), "grads": (N, P)}
        else:
            shapes = {"outbox": (N, max(1, mailbox_floats(self.strategy, N, P)))}
        for key, shape in shapes.items():  # the mailboxes carry the strategy's wire dtype
            self._bufs[key] = Buffer(shape, self.strategy.wire_dtype if key == "outbox" else floatX)
        return {k: self._bufs[k].spec for k in shapes}

    def _allocate(self, batch_capacity):
        """(Re)allocate the batch buffers for ``batch_capacity`` samples."""
        D = _floats_per_sample(self.model)
        for key, shape, dtype in (("x", (batch_capacity * D,), floatX), ("y", (batch_capacity,), np.int32)):
            old = self._bufs.get(key)
            self._bufs[key] = Buffer(shape, dtype)
            if old is not None:
                old.close(unlink=True)
        self.capacity = batch_capacity

    def _attach_message(self):
        return ("attach", {k: self._bufs[k].spec for k in ("x", "y")})

    def _start_workers(self, timeout):
        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited BLAS threads or locks
        N, static = self.n_devices, self._static()
        mesh = {}  # a pipe per pair of devices, only where devices talk to each other
        if self.strategy.needs_links:
            for i in range(N):
                for j in range(i + 1, N):
                    mesh[i, j], mesh[j, i] = ctx.Pipe()
        with _pinned_spawn_env():
            for d in range(N):
                parent, child = ctx.Pipe()
                core = self.cores[d % len(self.cores)]
                pipes = {j: mesh[d, j] for j in range(N) if (d, j) in mesh}
                p = ctx.Process(target=worker_main, name=f"mgpu-device-{d}", daemon=True,
                                args=(d, N, self.model.spec, child, core, self.strategy, pipes,
                                      static))
                p.start()
                child.close()
                self.workers.append(p)
                self.conns.append(parent)
        for end in mesh.values():  # only the two devices hold a pipe: one dying is EOF to the other
            end.close()
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
                    (errors if reply[0] in ("error", "lost") else replies)[d] = reply
                    if reply[0] == "lost":  # its replica is of no whole step: nor is the pool's
                        self.close()
                        raise DeviceStateLost(reply[1])
                    if reply[0] == "error" and pending and self.strategy.needs_links:
                        self.close()  # the others may wait on it mid-exchange: stop them all
                        raise DeviceError(d, reply[1])
                elif self.workers[d].sentinel in ready:
                    raise self._died(d)
        if errors:
            d = min(errors)
            raise DeviceError(d, errors[d][1])
        gone = [d for d, r in replies.items() if r[0] == "gone"]
        if gone:  # a peer broke a link but no death was seen (should not happen)
            self.close()
            raise DeviceError(gone[0], "lost a peer device in the middle of a step")
        return replies

    # -- the step -------------------------------------------------------------------
    def _run_devices(self, values, x, y, bounds, update, t):
        t0 = time.perf_counter()
        self._put_batch(x, y)
        on_host = self.strategy.updates_on_host
        if on_host:
            flatten(values, out=self._bufs["params"].array)  # broadcast: one copy, all read it
        elif values is not None or (update is not None and update.state is not None):
            self.load_state_dict({"values": values, "state": update and update.state})
        job = None if update is None or on_host else update.for_devices()
        weights = self.strategy.weights([b - a for a, b in bounds])
        t1 = time.perf_counter()
        try:
            for d, ((a, b), w) in enumerate(zip(bounds, weights)):
                self._send(d, ("step", a, b, float(w), job))
            replies = self._collect(range(self.n_devices))
        except (KeyboardInterrupt, OSError):
            self.close()  # workers are mid-step: the only safe state is no workers at all
            raise
        t.scatter, t.sync = t1 - t0, time.perf_counter() - t1
        return self._read_replies([replies[d] for d in range(self.n_devices)], t)

    def _put_batch(self, x, y):
        """The batch into shared memory (grown first if it does not fit)."""
        if len(x) > self.capacity:
            self._allocate(batch_capacity=len(x))
            self._broadcast(self._attach_message())
        self._bufs["x"].array[:x.size] = x.ravel()
        self._bufs["y"].array[:len(y)] = y

    def probe(self, kind, *args, x=None, y=None):
        """A measurement on every device's own loop and links: ``"bare"`` (batch, steps:
        seconds of bare calls on the batch ``x, y``), ``"copy"`` (bytes/s of the fetch's
        copy), ``"rss"`` (resident bytes, psutil), ``"ping"`` (a round trip). One result
        per device."""
        if x is not None:
            self._put_batch(x, y)
        replies = self._broadcast((kind,) + args)
        return [replies[d][1] for d in range(self.n_devices)]

    def _read_replies(self, replies, t):
        """Losses, compute seconds, the host's view and the devices' squared norms; the
        slowest device's phases."""
        refused = [r[1] for r in replies if r[0] == "refused"]
        if refused:  # every device refused before changing anything
            raise NonFiniteGradient(refused[0])
        per_dev, waited = [r[2] for r in replies], t.sync
        for phase in per_dev[0]:  # the slowest device's, as on GPUs
            setattr(t, phase, max(p[phase] for p in per_dev))
        # all the waiting: the host's wait beyond the devices' working phases, which
        # includes the devices' waits on each other
        t.sync = max(0.0, waited - sum(getattr(t, p) for p in per_dev[0] if p != "sync"))
        self.last_bytes = [r[3] for r in replies]
        view = HostView(self.n_devices, self.shapes, grad=self._bufs["grads"].array.__getitem__) \
            if self.strategy.updates_on_host else None
        norms = [r[4] for r in replies]  # (|g_i|^2, batch part): two floats per device
        return [r[1] for r in replies], [p["compute"] for p in per_dev], view, norms

    # -- the devices' state, on demand ------------------------------------------------
    def _block(self, floats):
        return Buffer((max(1, floats),), floatX)  # made for one request, freed after it

    def load_state_dict(self, sd):
        """Give every device ``sd["values"]`` (a parameter list, or None: kept) and its part
        of ``sd["state"]`` ([slot][param], or None: kept), through one block made for it."""
        values, state = sd.get("values"), sd.get("state")
        if self.strategy.updates_on_host or (values is None and not state):
            return
        P, S = self.model.n_params, len(state) if state else 0
        block = self._block(P * (1 + S))
        try:
            if values is not None:
                flatten(values, out=block.array[:P])
            for k, slot in enumerate(state or []):
                flatten(slot, out=block.array[P * (1 + k):P * (2 + k)])
            self._broadcast(("load", block.spec, S, values is not None))
        finally:
            block.close(unlink=True)

    def _gather(self, what, rows=1, devices=None):
        """``what`` ("params", "state", "grad", or "replica": one device's whole copy) from
        ``devices`` (default: those that hold a part of it), consolidated on the host: a flat
        (rows * P,) array."""
        P, N = self.model.n_params, self.n_devices
        block = self._block(rows * P)
        try:
            if devices is None:
                ranges = (self.strategy.host_range(d, N, P) for d in range(N))
                devices = [d for d, (a, b) in enumerate(ranges) if b > a]
            self._broadcast(("export", block.spec, what), devices)
            return block.array[:rows * P].copy()
        finally:
            block.close(unlink=True)

    def state_dict(self, slots=None):
        """The devices' parameters and optimizer state (``slots`` arrays per parameter),
        gathered to the host: ``{"values": [...], "state": [[...]] or None}``. The host
        gather's devices keep no state of their own: ``None`` for both."""
        if self.strategy.updates_on_host:
            return {"values": None, "state": None}
        values = unflatten(self._gather("params"), self.shapes)
        state = None
        if slots:
            flat = self._gather("state", rows=slots).reshape(slots, -1)
            state = [unflatten(row, self.shapes) for row in flat]
        return {"values": values, "state": state}

    def step_gradient(self):
        """The batch gradient the devices hold after a step without update (device 0's, or
        the shards' owners')."""
        return unflatten(self._gather("grad"), self.shapes)

    def device_memory(self):
        """Bytes each device holds between steps: parameters, gradient, optimizer state, the
        mailbox (counted by each worker from its arrays)."""
        return self.probe("held")

    def device_rss(self):
        """Each worker's resident memory in bytes (psutil): measured, not counted."""
        return self.probe("rss")

    def device_parameters(self):
        """(N, P) copy: every device's own replica."""
        if self.strategy.updates_on_host:
            raise ValueError(f"strategy {self.strategy.name!r} updates on the host: the devices "
                             f"keep no parameters of their own")
        return np.stack([self._gather("replica", devices=[d]) for d in range(self.n_devices)])

    def pids(self):
        return [p.pid for p in self.workers]

    def close(self):
        """Stop every worker (politely, then by force) and free the shared memory."""
        if not self.closed:
            self.closed = True
            self._finalizer()

    def __repr__(self):
        state = "closed" if self.closed else f"{len(self.workers)} workers"
        return fold(f"<DevicePool {self.model.spec.describe()} x{self.n_devices} ({state})>")


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
