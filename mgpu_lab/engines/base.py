"""The one engine protocol: ``Engine.step(values, x, y, update) -> StepResult``.

An engine is N devices. Every engine's step is the same four moves:

    check the batch; split bounds from split.py; memory check   Engine.step (here, once)
    each device: loss and gradient of its split                  engine._compute
    exchange: stack on the host, or reduce between devices;
    the update, where the strategy puts it                       engine._exchange
    batch loss = sum_i (n_i / B) loss_i                          Engine.step (here)

The base class owns the first and the last line. An engine supplies ``_compute`` (how its
devices compute their splits) and, if the host does not simply stack and update,
``_exchange``. The serial engine needs only ``_compute``.

``update`` is any ``update(values, grads, loss) -> new values``, run where the strategy
says. An engine that runs it on devices in other processes (the local engine's ring)
must ship it there, so it needs an :class:`OptimizerUpdate`: picklable, the optimizer's
rule with the trainer's checks, whose state the host keeps (see ``for_devices``).
"""
import copy
import numbers
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from .._theano import floatX
from ..errors import DeviceOutOfMemory, EngineClosed, NonFiniteGradient
from ..gradients import STRATEGIES, all_finite, stack_gradients, stack_losses
from ..models import build
from ..predict.memory import estimate, max_batch_size
from ..split import split_bounds
from ..validate import check_n_devices

__all__ = ["Timings", "StepResult", "Engine", "OptimizerUpdate", "FixedRate", "check_fits",
           "check_memory_bytes", "flatten", "unflatten"]


@dataclass
class Timings:
    """Where one step's time went, in seconds; a phase an engine does not have stays 0.

    On N devices each device phase is its slowest device's, as on real GPUs.
    """

    split: float = 0.0  # host: check the batch, cut it into splits
    scatter: float = 0.0  # host: parameters and batch out to the devices (the broadcast's send)
    set_params: float = 0.0  # device: copy the parameters in (the broadcast's receive)
    compute: float = 0.0  # device: the compiled loss-and-gradient function
    fetch: float = 0.0  # device: hand its gradient over (the transfer back to the host)
    sync: float = 0.0  # waiting on devices and messages, beyond the device phases above
    exchange: float = 0.0  # collectives between devices: gather, reduce, all-reduce, broadcast
    stack: float = 0.0  # sum_i (n_i / B) g_i
    update: float = 0.0  # the optimizer's update rule
    total: float = 0.0  # the whole step

    @classmethod
    def phases(cls):
        """The phase names, in step order (every field but ``total``)."""
        return tuple(f.name for f in fields(cls) if f.name != "total")

    def as_dict(self):
        return asdict(self)


@dataclass
class StepResult:
    """One step's outcome, the same from every engine."""

    loss: float  # batch mean loss, sum_i (n_i / B) loss_i
    grads: list  # arrays shaped like the params: gradient of the batch mean loss
    new_values: list  # parameters after the update (None when no update was asked for)
    split_sizes: list  # n_i, samples per device
    device_seconds: list  # compute seconds of each device
    timings: Timings


def flatten(arrays, out=None):
    """Concatenate arrays into one flat floatX vector (into ``out`` when given)."""
    sizes = [a.size for a in arrays]
    out = np.empty(sum(sizes), dtype=floatX) if out is None else out
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


class FixedRate:
    """A learning-rate schedule that is one number (picklable, unlike a lambda)."""

    def __init__(self, lr):
        self.lr = float(lr)

    def __call__(self, step):
        return self.lr


class OptimizerUpdate:
    """``update(values, grads, loss) -> new values``: ``optimizer``'s rule, refusing a step
    whose loss, gradient or result is not finite (:class:`NonFiniteGradient`; neither the
    parameters nor the optimizer's state change). ``label`` names the step in the message.
    """

    def __init__(self, optimizer, label="this step"):
        self.optimizer, self.label = optimizer, label

    def __call__(self, values, grads, loss):
        if not np.isfinite(loss) or not all_finite(grads):
            raise NonFiniteGradient(
                f"{self.label}: the gradient (or loss {loss}) is NaN or infinite; parameters "
                f"left untouched (lower the learning rate or check the data)")
        opt = self.optimizer
        before = opt.state, opt.t  # update() replaces both, never mutates
        new_values = opt.update(values, grads)
        if not all_finite(new_values):
            opt.state, opt.t = before  # the optimizer forgets this step too
            raise NonFiniteGradient(f"{self.label}: the update produced NaN or infinite "
                                    f"parameters; parameters left untouched")
        return new_values

    def for_devices(self):
        """A picklable copy for devices in other processes: this step's learning rate
        fixed (schedules may be lambdas), no state. The engine hands the state over
        (``state``, ``t``) and gives the new state back with :meth:`commit`."""
        opt = copy.copy(self.optimizer)
        opt.schedule, opt.state = FixedRate(self.optimizer.schedule(self.optimizer.t)), []
        return OptimizerUpdate(opt, self.label)

    def n_slots(self, dtype=floatX):
        """How many state arrays per parameter the rule keeps (SGD 0, momentum 1, Adam 2)."""
        probe = self.for_devices().optimizer
        probe.update([np.zeros(1, dtype)], [np.zeros(1, dtype)])  # one number: cheap
        return len(probe.state)

    def commit(self, state):
        """The devices applied this step: take their new state (fresh arrays, one list per slot)."""
        self.optimizer.state, self.optimizer.t = state, self.optimizer.t + 1


def check_memory_bytes(memory_bytes):
    """``memory_bytes`` (a device's memory capacity) is None or a positive number."""
    if memory_bytes is not None and (isinstance(memory_bytes, bool)
                                     or not isinstance(memory_bytes, numbers.Real)
                                     or not memory_bytes >= 1):  # (NaN fails >= too)
        raise ValueError(f"memory_bytes must be a positive number of bytes per device (or None "
                         f"for no limit), got {memory_bytes!r}")
    return memory_bytes


def check_fits(model, sizes, memory_bytes):
    """Raise :class:`DeviceOutOfMemory` for the first split too big for its device."""
    if check_memory_bytes(memory_bytes) is None:
        return
    # Splits take at most two sizes and repeat every step: walk the graph once per size.
    cache = model.__dict__.setdefault("_bytes_for_split", {})
    for device, n in enumerate(sizes):
        if n not in cache:
            cache[n] = estimate(model, n)["total"]
        if cache[n] > memory_bytes:
            raise DeviceOutOfMemory(device, cache[n], memory_bytes,
                                    max_batch_size(model, memory_bytes), n)


class Engine:
    """N devices behind one call: :meth:`step`. Use as a context manager.

    ``model``: a :class:`~mgpu_lab.models.Model` or its :class:`~mgpu_lab.models.ModelSpec`.
    ``memory_bytes``: each device's memory capacity (None: unlimited), checked before any
    work. ``strategy``: how gradients are combined, one of the class's ``strategies``.
    """

    strategies = ("host",)  # what this engine can do, out of gradients.STRATEGIES
    closed = False
    closes_itself = ""  # when else it closes, for the error after it did

    def __init__(self, model, n_devices=1, memory_bytes=None, strategy="host"):
        if strategy not in STRATEGIES or strategy not in self.strategies:
            raise ValueError(f"{type(self).__name__} has no strategy {strategy!r}; choose one "
                             f"of {', '.join(self.strategies)}")
        self.model = build(model)
        self.n_devices = check_n_devices(n_devices)
        self.memory_bytes, self.strategy = memory_bytes, strategy
        check_fits(self.model, [1], memory_bytes)  # a device that cannot hold one sample is useless

    # -- the protocol ---------------------------------------------------------------------
    def step(self, values, x, y, update=None):
        """One data-parallel step on ``(x, y)`` from parameters ``values``.

        ``update(values, grads, loss) -> new values`` is the update rule; the engine runs
        it where its strategy says (the host, or every device). Without it the step stops
        at the stacked gradient (``new_values`` is None).
        """
        if self.closed:
            raise EngineClosed(f"this {type(self).__name__} is closed{self.closes_itself}; "
                               f"create a new one")
        t0 = time.perf_counter()
        x, y = self.model.check_batch(x, y)
        bounds = split_bounds(len(x), self.n_devices)
        sizes = [b - a for a, b in bounds]
        check_fits(self.model, sizes, self.memory_bytes)  # before any work: nothing half-done
        t = Timings(split=time.perf_counter() - t0)
        losses, device_seconds, local = self._compute(values, x, y, bounds, update, t)
        loss = stack_losses(losses, sizes)
        grads, new_values = self._exchange(values, local, sizes, loss, update, t)
        t.total = time.perf_counter() - t0
        return StepResult(loss, grads, new_values, sizes, list(device_seconds), t)

    def gradients(self, values, x, y):
        """The stacked gradient of the batch (a :class:`StepResult` with no update)."""
        return self.step(values, x, y)

    # -- what an engine supplies ----------------------------------------------------------
    def _compute(self, values, x, y, bounds, update, t):
        """Each device's split ``x[a:b]``: ``(losses, device_seconds, local)``, where
        ``local`` is what ``_exchange`` combines (here: per-device gradient lists).
        ``update`` is there for engines whose devices update in the same round trip (the
        local ring); the others leave it to ``_exchange``."""
        raise NotImplementedError

    def _exchange(self, values, local, sizes, loss, update, t):
        """``(grads, new_values)``. By default the host stacks and applies the update."""
        t0 = time.perf_counter()
        grads = stack_gradients(local, sizes)
        t.stack = time.perf_counter() - t0
        return grads, self._update(update, values, grads, loss, t)

    @staticmethod
    def _update(update, values, grads, loss, t):
        """The update rule, timed into ``t.update`` (None without one)."""
        if update is None:
            return None
        t0 = time.perf_counter()
        new = update(values, grads, loss)
        t.update += time.perf_counter() - t0
        return new

    # -- lifetime -------------------------------------------------------------------------
    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
