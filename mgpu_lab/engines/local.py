"""The local engine: one worker process per simulated GPU, each with its own compiled function.

A "device" here is a process pinned to one CPU core (BLAS limited to one thread), which
rebuilds the model from its spec and compiles its own Theano gradient function, as each
GPU would (the worker's side: :mod:`mgpu_lab.engines.worker`). Data moves through shared
memory, not pickles; only tiny control messages go through pipes. Workers die with the
pool: on ``close()``, on any error, on Ctrl-C, and (pipe EOF) if the parent itself dies.

One step: the host writes the parameters and the batch (and the optimizer state, when the
devices update); each device computes its split and runs ``strategy.on_device`` over its
:class:`~mgpu_lab.engines.worker.ShmLink`; the host runs ``strategy.on_host`` on what the
devices left in shared memory. The host's parameters and optimizer state are the ones a
checkpoint saves, and a failed step changes neither.
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
from .base import Engine, flatten
from .pinning import PIN_ENV, cores
from .strategies import HostView
from .worker import Buffer, worker_main

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
    def _allocate(self, batch_capacity=None, slots=None):
        """(Re)allocate the batch buffers for ``batch_capacity`` samples, or the optimizer
        state buffers for ``slots`` slots; the others are kept. True if any block is new."""
        P, D, N = self.model.n_params, _floats_per_sample(self.model), self.n_devices
        shapes = {"params": (P,), "grads": (N, P)}
        if self.strategy.needs_links:  # the devices exchange and update
            shapes.update(new=(N, P), outbox=(N, P))
        if batch_capacity is not None:
            shapes.update(x=(batch_capacity * D,), y=(batch_capacity,))
            self.capacity = batch_capacity
        if slots:
            shapes.update(state=(slots, P), state_out=(N, slots, P))
        changed = False
        for key, shape in shapes.items():
            old = self._bufs.get(key)
            if old is None or old.array.shape != shape:
                self._bufs[key], changed = Buffer(shape, np.int32 if key == "y" else floatX), True
                if old is not None:
                    old.close(unlink=True)
        return changed

    def _attach_message(self):
        return ("attach", {k: b.spec for k, b in self._bufs.items()})

    def _start_workers(self, timeout):
        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited BLAS threads or locks
        N = self.n_devices
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
                                args=(d, N, self.model.spec, child, core, self.strategy, pipes))
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
                    (errors if reply[0] == "error" else replies)[d] = reply
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
        job = self._devices_update(update)
        self._put_batch(x, y, attach=job.pop("attach"))
        flatten(values, out=self._bufs["params"].array)  # broadcast: one copy, all devices read it
        weights = self.strategy.weights([b - a for a, b in bounds])
        t1 = time.perf_counter()
        try:
            for d, ((a, b), w) in enumerate(zip(bounds, weights)):
                self._send(d, ("step", a, b, float(w), job["update"], job["slots"]))
            replies = self._collect(range(self.n_devices))
        except (KeyboardInterrupt, OSError):
            self.close()  # workers are mid-step: the only safe state is no workers at all
            raise
        t.scatter, t.sync = t1 - t0, time.perf_counter() - t1
        return self._read_replies([replies[d] for d in range(self.n_devices)], job["slots"], t)

    def _put_batch(self, x, y, attach=False):
        """The batch into shared memory (grown first if it does not fit)."""
        if (len(x) > self.capacity and self._allocate(batch_capacity=len(x))) or attach:
            self._broadcast(self._attach_message())
        self._bufs["x"].array[:x.size] = x.ravel()
        self._bufs["y"].array[:len(y)] = y

    def probe(self, kind, *args, x=None, y=None):
        """A measurement on every device's own loop and links: ``"bare"`` (batch, steps:
        seconds of bare calls on the batch ``x, y``), ``"copy"`` (bytes/s into shared
        memory), ``"ping"`` (a round trip). One result per device."""
        if x is not None:
            self._put_batch(x, y)
        replies = self._broadcast((kind,) + args)
        return [replies[d][1] for d in range(self.n_devices)]

    def _devices_update(self, update):
        """What the devices need of ``update`` when they run it: the optimizer with this
        step's rate (picklable) and the state, copied into shared memory."""
        job = {"update": None, "slots": 0, "attach": False}
        if update is None or self.strategy.updates_on_host:
            return job
        slots = update.optimizer.slots
        job.update(update=update.for_devices(), slots=slots,
                   attach=bool(slots) and self._allocate(slots=slots))
        for k, slot in enumerate(update.state):
            flatten(slot, out=self._bufs["state"].array[k])
        return job

    def _read_replies(self, replies, slots, t):
        """Losses, compute seconds and the host's view; the slowest device's phases."""
        per_dev = [r[2] for r in replies]
        for phase in per_dev[0]:  # the slowest device's, as on GPUs
            setattr(t, phase, max(p[phase] for p in per_dev))
        t.sync = max(0.0, t.sync - sum(getattr(t, p) for p in per_dev[0]))
        refused = [r[3] for r in replies if r[3]]
        if refused:  # nothing was committed: parameters and optimizer state are as before
            raise NonFiniteGradient(refused[0])
        b = self._bufs
        view = HostView(self.n_devices, self.shapes, slots, grad=b["grads"].array.__getitem__,
                        new=b["new"].array.__getitem__ if "new" in b else None,
                        state=(b["state_out"].array.__getitem__ if slots else
                               lambda r: np.empty((0, self.model.n_params), floatX)))
        return [r[1] for r in replies], [p["compute"] for p in per_dev], view

    def device_memory(self):
        """Bytes each device held at the last step: parameters, gradients, optimizer state
        (counted by each worker from the arrays it used)."""
        held = self.probe("held")
        if None in held:
            raise ValueError("no step has run yet: device_memory() counts what a step used")
        return held

    def device_parameters(self):
        """(N, P) copy: every device's parameters after the last step that updated on them."""
        if "new" not in self._bufs:
            raise ValueError(f"strategy {self.strategy.name!r} updates on the host: the devices "
                             f"keep no parameters of their own")
        return self._bufs["new"].array.copy()

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
