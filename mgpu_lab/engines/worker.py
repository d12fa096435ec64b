"""One simulated GPU: the worker process of :class:`~mgpu_lab.engines.local.DevicePool`.

A worker rebuilds the model from its spec and makes one long-lived
:class:`~mgpu_lab.engines.device.Device`, which compiles its own gradient function and
holds its replica, gradient and optimizer state for the worker's whole life. It then
answers the pool's messages. What crosses between processes lives in shared memory blocks
the pool created:

    x, y       the batch        device i reads samples [a_i, b_i) (split_bounds)
    params     floatX[P]        host gather only: the host's parameters, which every
                                device's replica views (the broadcast: one copy, all read it)
    grads      floatX[N, P]     host gather only: device i's gradient is row i (the fetch)
    outbox     wire[N, M]       the other strategies: device i's mailbox, one packet of
                                M <= PACKET values (a ring chunk travels in packets), in
                                the strategy's ``wire_dtype`` (float16 for "ring16": a
                                packet is cast on the way in, added in float32 on the way out)

Loading and consolidating (``load`` / ``export``) use a block made for that one request
and freed after it: nothing of size P is shared between steps except where the algorithm
moves it.

:class:`ShmLink` is this transport's end of a link: ``sendrecv`` copies a packet into the
mailbox and exchanges one signal byte with the peer over a pipe ("s": ready to read,
"r": read); the receiver adds (or copies) straight out of the sender's mailbox, so a
device needs no scratch buffer of its own. The strategy does the rest.
"""
import os
import signal
import sys
import time
import traceback
from multiprocessing import shared_memory
from multiprocessing.connection import wait

import numpy as np

from .._theano import floatX
from ..errors import DeviceStateLost, NonFiniteGradient
from ..models import build
from .device import Device
from .pinning import pin

__all__ = ["Buffer", "ShmLink", "worker_main", "PACKET", "mailbox_floats"]

PACKET = 2 ** 18  # floats in one mailbox packet (1 MiB): a chunk travels in packets


def mailbox_floats(strategy, size, P):
    """M: a device's mailbox, one packet or one whole message if smaller."""
    return min(PACKET, strategy.message_floats(size, P))


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
    shared memory. Counts what it moves: ``sent`` and ``received`` bytes, and ``waited``
    (seconds blocked on a peer's signal)."""

    def __init__(self, rank, size, pipes, parent):
        self.rank, self.size, self.pipes, self.parent = rank, size, pipes, parent
        self.outbox, self.scratch_bytes, self.wire_dtype = None, 0, np.dtype(floatX)
        self.reset()

    def reset(self):
        self.sent, self.received, self.waited = 0, 0, 0.0

    def to_host(self, flat):
        self.sent += flat.nbytes  # the gradient is already in its row of shared memory

    def sendrecv(self, send, dest, recv, source, add=False):
        """Packet by packet: my packet into my mailbox, "s" to ``dest``; wait for "s" from
        ``source``, add (or copy) its packet out of its mailbox, "r" back; wait for "r"."""
        ns = 0 if send is None else send.size
        nr = 0 if recv is None else recv.size
        M, box = self.outbox.shape[1] if self.outbox is not None else 0, self.outbox
        i = j = 0
        while i < ns or j < nr:
            k = min(M, ns - i)
            if k:
                box[self.rank, :k] = send[i:i + k]  # cast to the mailbox's wire dtype
                self._signal(dest, b"s")
            if j < nr:
                m = min(M, nr - j)
                self._expect(source, b"s")
                if add:
                    recv[j:j + m] += box[source, :m]
                else:
                    recv[j:j + m] = box[source, :m]
                self._signal(source, b"r")
                j += m
            if k:
                self._expect(dest, b"r")  # dest has read it: my mailbox is free again
                i += k
        self.sent += self.wire_dtype.itemsize * ns
        self.received += self.wire_dtype.itemsize * nr

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
        self.waited += time.perf_counter() - t0
        try:
            got = self.pipes[peer].recv_bytes()
        except (EOFError, OSError):
            raise _PeerGone from None
        if got != byte:
            raise RuntimeError(f"device {self.rank}: expected {byte!r} from device {peer}, got {got!r}")


class _Worker:
    """The worker's state: its device, its link and the shared blocks it has attached."""

    def __init__(self, device, n_devices, spec, conn, strategy, pipes, static):
        built = build(spec)
        self.link = ShmLink(device, n_devices, pipes, conn)
        self.static = {k: Buffer(s[1], s[2], name=s[0]) for k, s in static.items()}
        params = self.static["params"].array if "params" in self.static else None
        grad = self.static["grads"].array[device] if "grads" in self.static else None
        if "outbox" in self.static:
            self.link.outbox = self.static["outbox"].array
            self.link.wire_dtype = self.link.outbox.dtype  # the strategy's wire_dtype
            self.link.scratch_bytes = self.link.outbox[0].nbytes  # its mailbox
        self.device = Device(device, n_devices, built, strategy, self.link, params, grad)
        self.batch = {}

    def attach(self, specs):
        """New batch blocks (the batch grew)."""
        for b in self.batch.values():
            b.close()
        self.batch = {k: Buffer(s[1], s[2], name=s[0]) for k, s in specs.items()}

    def step(self, start, stop, weight, update):
        """One step on samples [start, stop): ``(status, loss, phases, bytes, sq_norms)``
        where status is "ok" or why the step was refused, and ``sq_norms`` the device's
        ``(|g_i|^2, batch part)`` (two floats: the gradient stays here)."""
        dev, link = self.device, self.link
        link.reset()
        x = self.batch["x"].array.reshape((-1,) + dev.input_shape)[start:stop]  # a view
        y = self.batch["y"].array[start:stop]
        if self.device.strategy.updates_on_host:
            link.received += dev.params.nbytes  # the host's parameters, read in place
        try:
            loss, times = dev.step(x, y, weight, update)
        except NonFiniteGradient as e:
            return "refused", str(e), None, None, None
        except DeviceStateLost as e:
            return "lost", str(e), None, None, None
        moved = {"sent": link.sent, "received": link.received, "batch": x.nbytes + y.nbytes}
        return "ok", loss, times, moved, dev.sq_norms

    def load(self, spec, slots, has_params):
        """Parameters and state from the host's block (made for this one request)."""
        block = Buffer(spec[1], spec[2], name=spec[0])
        try:
            flat = block.array
            P = self.device.n_params
            self.device.load(flat[:P] if has_params else None,
                             flat[P:].reshape(slots, P) if slots else None)
        finally:
            block.close()

    def export(self, spec, what):
        """This device's host range of ``what`` ("params", "state" or "grad") into the
        host's block; the host asks each device that holds a part."""
        block = Buffer(spec[1], spec[2], name=spec[0])
        try:
            dev, out = self.device, block.array
            if what == "params":
                dev.export(params_out=out)
            elif what == "replica":
                out[:dev.n_params] = dev.params
            elif what == "grad":
                dev.export(grad_out=out)
            elif dev.state is not None:
                dev.export(state_out=out.reshape(-1, dev.n_params))
        finally:
            block.close()


def _bare(w, batch_size, steps):
    """Seconds of ``steps`` bare calls of the compiled function on the first samples of the
    batch in shared memory: the device's compute with nothing around it."""
    x = w.batch["x"].array.reshape((-1,) + w.device.input_shape)[:batch_size]
    y, times = w.batch["y"].array[:batch_size], []
    for _ in range(steps):
        t0 = time.perf_counter()
        w.device.fn(x, y)  # the result is dropped here, inside the timing, as a device does
        times.append(time.perf_counter() - t0)
    return times


def _copy(w, repeats=50):
    """Bytes/s of copying P floats (the fetch: Theano's output into the flat gradient)."""
    dst, src, times = w.device.grad, np.ones(w.device.n_params, floatX), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return dst.nbytes / float(np.median(times))


def _rss(w):
    """This process's resident memory, bytes (psutil): what the device really holds."""
    import psutil
    return psutil.Process().memory_info().rss


_PROBES = {"bare": _bare, "copy": _copy, "held": lambda w: w.device.held(), "rss": _rss,
           "ping": lambda w: None}


def worker_main(device, n_devices, spec, conn, core, strategy, pipes, static):
    """The worker's process: serve until "stop" or EOF, then leave at once.

    ``os._exit`` skips the interpreter's clean-up, which frees Theano's graphs object by
    object (about a second per worker, paid on every pool's close). Nothing is lost: the
    parent owns and unlinks the shared memory, and the pipes close with the process.
    """
    _serve(device, n_devices, spec, conn, core, strategy, pipes, static)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve(device, n_devices, spec, conn, core, strategy, pipes, static):
    """The worker's loop: compile, say "ready", answer messages until "stop" or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    pin(core)  # where the system allows it
    try:
        w = _Worker(device, n_devices, spec, conn, strategy, pipes, static)
        conn.send(("ready", os.getpid()))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone: so are we
        try:
            if msg[0] == "stop":
                return
            if msg[0] == "attach":
                w.attach(msg[1])
                conn.send(("ok",))
            elif msg[0] == "step":
                conn.send(w.step(*msg[1:]))
            elif msg[0] == "load":
                w.load(*msg[1:])
                conn.send(("ok",))
            elif msg[0] == "export":
                w.export(*msg[1:])
                conn.send(("ok",))
            elif msg[0] in _PROBES:  # the benchmark's baseline, on this same loop
                conn.send(("ok", _PROBES[msg[0]](w, *msg[1:])))
        except _Stop:
            return
        except _PeerGone:
            conn.send(("gone",))  # not this device's fault: the dead one is named by the host
        except BaseException:
            conn.send(("error", traceback.format_exc()))
