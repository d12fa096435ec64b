"""One simulated GPU: the worker process of :class:`~mgpu_lab.engines.local.DevicePool`.

A worker rebuilds the model from its spec, compiles its own gradient function, and then
answers the pool's messages. Its data lives in shared memory blocks the pool created:

    params     floatX[P]        the host's parameters (the broadcast: one copy, all read it)
    x, y       the batch        device i reads samples [a_i, b_i) (split_bounds)
    grads      floatX[N, P]     device i writes its gradient to row i (the fetch); with a
                                strategy that reduces on the devices, row i is its work buffer
    new        floatX[N, P]     device i's parameters after its own update
    state      floatX[S, P]     the host's optimizer state (S slots), read by the devices
    state_out  floatX[N, S, P]  device i's optimizer state after its update (its range)
    outbox     floatX[N, P]     device i's mailbox: what it sends another device

:class:`ShmLink` is this transport's end of a link: ``sendrecv`` copies into the
mailbox and exchanges one signal byte with the peer over a pipe ("s": ready to read,
"r": read). The strategy (:mod:`mgpu_lab.engines.strategies`) does the rest.
"""
import os
import signal
import time
import traceback
from multiprocessing import shared_memory
from multiprocessing.connection import wait

import numpy as np

from .._theano import floatX
from ..errors import NonFiniteGradient
from ..models import build
from .pinning import pin
from .update import DeviceStep, flatten, unflatten

__all__ = ["Buffer", "ShmLink", "compute_split", "worker_main"]


class Buffer:
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


class _Stop(Exception):
    """The parent stopped us (or died) while we waited on another device."""


class _PeerGone(Exception):
    """A peer's link broke: it died. The parent learns which from its sentinel."""


class ShmLink:
    """This device's end of the pool's links: a pipe to every other device, mailboxes in
    shared memory. ``waited``: seconds of the step's first wait (a peer still computing)."""

    def __init__(self, rank, size, pipes, parent):
        self.rank, self.size, self.pipes, self.parent = rank, size, pipes, parent
        self.outbox, self.waited = None, None

    def to_host(self, flat):
        return None  # the gradient is already in shared memory, where the host reads it

    def sendrecv(self, send, dest, recv, source):
        if send is not None:
            self.outbox[self.rank, :send.size] = send
            self._signal(dest, b"s")
        if recv is not None:
            self._expect(source, b"s")
            recv[...] = self.outbox[source, :recv.size]
            self._signal(source, b"r")
        if send is not None:
            self._expect(dest, b"r")  # dest has read it: my mailbox is free again

    def _signal(self, peer, byte):
        try:
            self.pipes[peer].send_bytes(byte)
        except OSError:
            raise _PeerGone from None

    def _expect(self, peer, byte):
        """One signal from ``peer``. The parent sends nothing mid-step, so if its pipe turns
        readable it said "stop" or died: leave."""
        t0 = time.perf_counter()
        if self.pipes[peer] not in wait([self.pipes[peer], self.parent]):
            raise _Stop
        if self.waited is None:
            self.waited = time.perf_counter() - t0
        try:
            got = self.pipes[peer].recv_bytes()
        except (EOFError, OSError):
            raise _PeerGone from None
        if got != byte:
            raise RuntimeError(f"device {self.rank}: expected {byte!r} from device {peer}, got {got!r}")


def compute_split(device, model, fn, bufs, start, stop):
    """Set params, run the gradient of samples [start, stop), write grads row ``device``.
    ``model`` is the worker's own: its params, their shapes and the input shape."""
    t0 = time.perf_counter()
    for p, v in zip(model.params, unflatten(bufs["params"].array, model.shapes)):
        p.get_value(borrow=True)[...] = v  # one copy out of shared memory, into Theano's own array
    x = bufs["x"].array.reshape((-1,) + model.input_shape)[start:stop]  # (n_i, *input_shape), a view
    y = bufs["y"].array[start:stop]
    t1 = time.perf_counter()
    loss, *grads = fn(x, y)
    t2 = time.perf_counter()
    flatten(grads, out=bufs["grads"].array[device])  # the fetch back to the host
    t3 = time.perf_counter()
    return float(loss), {"set_params": t1 - t0, "compute": t2 - t1, "fetch": t3 - t2}


class _Model:
    """What a worker's step needs of its model: the shared variables and the shapes."""

    def __init__(self, params, shapes, input_shape):
        self.params, self.shapes, self.input_shape = params, shapes, input_shape
        self.last_step = None


def _step(device, model, fn, bufs, strategy, link, start, stop, weight, update, slots):
    """Compute, then the strategy's part on this device. Returns (loss, seconds per phase,
    why the update was refused or None); what it held stays in ``model.last_step``."""
    loss, times = compute_split(device, model, fn, bufs, start, stop)
    arr = {k: v.array for k, v in bufs.items()}
    state = strategy.state_range(device, link.size, len(arr["params"])) if update else (0, 0)
    dev = DeviceStep(arr["grads"][device], arr["params"], update, weight, loss, state,
                     new=arr["new"][device] if "new" in arr else None,
                     state_in=arr["state"] if slots else None,
                     state_out=arr["state_out"][device] if slots else None)
    link.outbox, link.waited = bufs["outbox"].array if "outbox" in bufs else None, None
    t0, refused = time.perf_counter(), None
    try:
        strategy.on_device(link, dev)
    except NonFiniteGradient as e:
        refused = str(e)
    spent = time.perf_counter() - t0
    times.update(exchange=max(0.0, spent - dev.seconds_update - (link.waited or 0.0)),
                 update=dev.seconds_update)
    model.last_step = dev  # what the device holds, counted on request ("held")
    return loss, times, refused


def _bare(model, fn, bufs, batch_size, steps):
    """Seconds of ``steps`` bare calls of the compiled function on the first samples of the
    batch in shared memory: the device's compute with nothing around it."""
    x = bufs["x"].array.reshape((-1,) + model.input_shape)[:batch_size]
    y, times = bufs["y"].array[:batch_size], []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn(x, y)  # the result is dropped here, inside the timing, as a device does
        times.append(time.perf_counter() - t0)
    return times


def _copy(model, fn, bufs, repeats=50):
    """Bytes/s of copying P floats into shared memory (this device's gradient row)."""
    row, src, times = bufs["grads"].array[0], np.ones(bufs["grads"].array.shape[1], floatX), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(row, src)
        times.append(time.perf_counter() - t0)
    return row.nbytes / float(np.median(times))


def _held(model, fn, bufs):
    """Bytes this device held at its last step (parameters, gradient, optimizer state)."""
    return model.last_step.held(model.params) if model.last_step else None


_PROBES = {"bare": _bare, "copy": _copy, "held": _held, "ping": lambda model, fn, bufs: None}


def worker_main(device, n_devices, spec, conn, core, strategy, pipes):
    """The worker's loop: compile, say "ready", answer messages until "stop" or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    pin(core)  # where the system allows it
    try:
        built = build(spec)
        fn = built.loss_and_gradients_function()
        # the few things a step reads of the model, looked up once
        model = _Model(built.params, built.param_shapes, built.input_shape)
        link = ShmLink(device, n_devices, pipes, conn)
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
            if msg[0] == "attach":  # new shared blocks (the batch grew, state buffers appeared)
                for b in bufs.values():
                    b.close()
                bufs = {k: Buffer(s[1], s[2], name=s[0]) for k, s in msg[1].items()}
                conn.send(("ok",))
            elif msg[0] == "step":
                conn.send(("ok",) + _step(device, model, fn, bufs, strategy, link, *msg[1:]))
            elif msg[0] in _PROBES:  # the benchmark's baseline, on this same loop
                conn.send(("ok", _PROBES[msg[0]](model, fn, bufs, *msg[1:])))
        except _Stop:
            return
        except _PeerGone:
            conn.send(("gone",))  # not this device's fault: the dead one is named by the host
        except BaseException:
            conn.send(("error", traceback.format_exc()))
