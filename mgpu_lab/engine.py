"""What every engine shares: the step's result, the memory check, the serial engine.

An engine turns ``(parameter values, x, y)`` into the stacked gradient of the batch. The
serial engine runs the N devices' work one after another in this process; the local
engine (:class:`mgpu_lab.devices.DevicePool`) runs it in N worker processes; the MPI
engine (:mod:`mgpu_lab.mpi`) on N MPI ranks. All three split, compute, stack the same way.
"""
import numbers
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import DeviceOutOfMemory, PoolClosed
from .gradients import stack_gradients
from .models import build
from .split import split_batch, split_sizes
from .validate import check_n_devices

__all__ = ["GradientResult", "Engine", "SerialEngine", "check_fits", "flatten", "unflatten"]


@dataclass
class GradientResult:
    """The stacked gradient of one batch and where the time went (seconds)."""

    grads: list  # arrays shaped like the params: gradient of the full-batch mean loss
    loss: float  # full-batch mean loss, sum_i (n_i / N) loss_i
    split_sizes: list  # n_i per device
    device_seconds: list  # compute time of each device's gradient function
    breakdown: dict = field(default_factory=dict)  # phase -> seconds (split, scatter, ...)


def flatten(arrays, out=None):
    """Concatenate arrays into one flat float32 vector (into ``out`` when given)."""
    sizes = [a.size for a in arrays]
    out = np.empty(sum(sizes), dtype=np.float32) if out is None else out
    pos = 0
    for a, n in zip(arrays, sizes):
        out[pos:pos + n] = np.ravel(a)
        pos += n
    return out


def unflatten(flat, shapes):
    """Views of ``flat`` shaped like ``shapes`` (no copy)."""
    views, pos = [], 0
    for s in shapes:
        n = int(np.prod(s))
        views.append(flat[pos:pos + n].reshape(s))
        pos += n
    return views


def check_fits(model, sizes, memory_bytes):
    """Raise :class:`DeviceOutOfMemory` for the first split too big for its device."""
    if memory_bytes is None:
        return
    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, numbers.Real) \
            or not memory_bytes >= 1:  # (NaN fails >= too)
        raise ValueError(f"memory_bytes must be a positive number of bytes per device (or None "
                         f"for no limit), got {memory_bytes!r}")
    from .memory import estimate, max_batch_size  # the memory model is only needed here
    # Splits take at most two sizes and repeat every step: walk the graph once per size.
    cache = model.__dict__.setdefault("_bytes_for_split", {})
    for device, n in enumerate(sizes):
        if n not in cache:
            cache[n] = estimate(model, n)["total"]
        needed = cache[n]
        if needed > memory_bytes:
            raise DeviceOutOfMemory(device, needed, memory_bytes,
                                    max_batch_size(model, memory_bytes), n)


class Engine:
    """What every engine shares: ``gradients(values, x, y)``, ``closed``, ``close()``, ``with``."""

    closed = False

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SerialEngine(Engine):
    """N simulated devices run one after another in this process (reference engine)."""

    def __init__(self, model_spec, n_devices=1, memory_bytes=None):
        self.model = build(model_spec)
        self.n_devices = check_n_devices(n_devices)
        self.memory_bytes = memory_bytes
        check_fits(self.model, [1], memory_bytes)  # a device that cannot hold one sample is useless
        self._fn, self.closed = None, False

    def gradients(self, values, x, y):
        if self.closed:
            raise PoolClosed("this SerialEngine is closed; create a new one")
        self._fn = self._fn or self.model.loss_and_gradients_function()  # compiled once
        t0 = time.perf_counter()
        x, y = self.model.check_batch(x, y)
        sizes = split_sizes(len(x), self.n_devices)
        check_fits(self.model, sizes, self.memory_bytes)
        self.model.set_values(values)
        t_split = time.perf_counter()
        losses, grads, secs = [], [], []
        for xs, ys in split_batch(x, y, self.n_devices):
            t = time.perf_counter()
            loss, *g = self._fn(xs, ys)
            secs.append(time.perf_counter() - t)
            losses.append(float(loss))
            grads.append([np.array(a) for a in g])  # Theano may reuse its output buffers
        t_stack = time.perf_counter()
        stacked = stack_gradients(grads, sizes)
        loss = float(np.dot(losses, sizes) / len(x))
        breakdown = {"split": t_split - t0, "compute": sum(secs),
                     "stack": time.perf_counter() - t_stack}
        return GradientResult(stacked, loss, sizes, secs, breakdown)
