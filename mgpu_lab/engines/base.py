"""The one engine protocol: ``Engine.step(values, x, y, update) -> StepResult``.

An engine is N devices and a :mod:`strategy <mgpu_lab.engines.strategies>`. Every
engine's step is the same moves:

    check the batch; split bounds from split.py; memory check   Engine.step (here, once)
    each device (a long-lived engines/device.py Device): loss   engine._run_devices
      and gradient of its split, then strategy.on_device over
      the engine's transport (exchange; update where the
      devices update)
    the host gather's host: stack and update (strategy.on_host) Engine.step (here)
    batch loss = sum_i (n_i / B) loss_i                          Engine.step (here)
    |g_i|^2 and |g|^2, the gradient noise scale's inputs         Engine.step (here)

The squared norms are computed where the gradients live, one float per device crosses:
each device's |g_i|^2 of its split's mean gradient (``Device.compute``), and |g|^2 of the
stacked gradient by whoever holds it after the exchange (the host gather's host; under
the others each device over its ``strategy.norm_range`` of the reduced gradient, summed
here: a ring chunk each where all hold the sum, the shards for the sharded optimizer).

The base class owns the checks and the host's part; an engine supplies ``_run_devices``,
a transport and the on-demand view of the devices' state (``state_dict`` /
``load_state_dict``). Where the state lives is the strategy's to say
(``updates_on_host``, ``state_range``), not the engine's: under the host gather the host
holds the parameters and the optimizer state and the result carries the new ones; under
the others each device keeps its replica and its part of the state between steps, and the
result carries neither (``new_values`` and ``new_state`` are None): ask ``state_dict()``.
``update`` is an :class:`Update`: the optimizer (a pure rule, :mod:`mgpu_lab.optim`), its
state arrays (None: the devices' own) and t.
"""
import numbers
import time
from dataclasses import asdict, dataclass, fields

from ..errors import DeviceOutOfMemory, EngineClosed
from ..gradients import stack_losses
from ..models import build
from ..predict.memory import estimate, max_batch_size
from ..split import split_bounds
from ..validate import check_n_devices
from .strategies import get_strategy
from .update import Update, apply_update, flatten, unflatten  # noqa: F401  (re-exported)

__all__ = ["Timings", "StepResult", "Engine", "check_fits", "check_memory_bytes",
           "flatten", "unflatten", "Update", "apply_update"]


@dataclass
class Timings:
    """Where one step's time went, in seconds; a phase an engine does not have stays 0.

    What each phase times, the same on every engine and transport (written here once). On
    N devices each device phase is its slowest device's, as on real GPUs.
    """

    split: float = 0.0  # host: check the batch, cut it into splits
    scatter: float = 0.0  # host: write the batch (and the host gather's parameters) where devices read
    set_params: float = 0.0  # device: parameters into its replica before computing (MPI host
    #                          gather: rank 0's copy, and the first step's Bcast; the pool: 0)
    compute: float = 0.0  # device: the compiled loss-and-gradient function
    fetch: float = 0.0  # device: its gradient out of Theano into the flat buffer that travels
    sync: float = 0.0  # waiting: on peers' messages, on the slowest device, on the host's verdict
    exchange: float = 0.0  # moving gradients (or shards) between processes, waits excluded
    stack: float = 0.0  # host gather: sum_i (n_i / B) g_i
    update: float = 0.0  # the optimizer's rule, where it runs (host or devices)
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
    grads: list  # arrays shaped like the params: gradient of the batch mean loss (None where
    #              no process holds it whole: after a device-side update)
    new_values: list  # parameters after the host's update (None: no update, or the devices hold them)
    new_state: list  # the optimizer's state after it ([slot][param]; None likewise)
    split_sizes: list  # n_i, samples per device
    device_seconds: list  # compute seconds of each device
    timings: Timings
    bytes: list = None  # per device {"sent", "received", "batch"}: bytes that crossed
    #                     between processes in this step (counted by the transport)
    split_sq_norms: list = None  # |g_i|^2 per device: the squared L2 norm of device i's
    #                              MEAN gradient over its n_i samples (float64 numbers)
    batch_sq_norm: float = None  # |g|^2 of the stacked full-batch gradient sum_i (n_i/B) g_i;
    #                              with split_sizes: mgpu_lab.statistics.gradient_noise_scale


def check_memory_bytes(memory_bytes):
    """``memory_bytes`` (a device's memory capacity) is None or a positive number."""
    if memory_bytes is not None and (isinstance(memory_bytes, bool)
                                     or not isinstance(memory_bytes, numbers.Real)
                                     or not memory_bytes >= 1):  # (NaN fails >= too)
        raise ValueError(f"memory_bytes must be a positive number of bytes per device (or None "
                         f"for no limit), got {memory_bytes!r}")
    return memory_bytes


def check_fits(model, sizes, memory_bytes, optimizer="sgd", sharding=0):
    """Raise :class:`DeviceOutOfMemory` for the first split too big for its device, counting
    the optimizer state the strategy keeps on a device (``optimizer`` "sgd" when it keeps
    none; ``sharding`` 1 for ZeRO-1's 1/N shard)."""
    if check_memory_bytes(memory_bytes) is None:
        return
    N = len(sizes)
    # Splits take at most two sizes and repeat every step: walk the graph once per size.
    cache = model.__dict__.setdefault("_bytes_for_split", {})
    for device, n in enumerate(sizes):
        key = (n, optimizer, sharding, N)
        if key not in cache:
            cache[key] = estimate(model, n, optimizer, sharding, N)["total"]
        if cache[key] > memory_bytes:
            raise DeviceOutOfMemory(device, cache[key], memory_bytes,
                                    max_batch_size(model, memory_bytes, N, optimizer, sharding) // N, n)


class Engine:
    """N devices behind one call: :meth:`step`. Use as a context manager.

    ``model``: a :class:`~mgpu_lab.models.Model` or its :class:`~mgpu_lab.models.ModelSpec`.
    ``memory_bytes``: each device's memory capacity (None: unlimited), checked before any
    work. ``strategy``: a name in :data:`~mgpu_lab.engines.strategies.STRATEGIES` or a
    strategy object; ``devices_per_node``: G for a hierarchical all-reduce.
    """

    links = False  # a transport between devices (strategies with ``needs_links`` need one)
    closed = False
    closes_itself = ""  # when else it closes, for the error after it did

    def __init__(self, model, n_devices=1, memory_bytes=None, strategy="host",
                 devices_per_node=None):
        self.model, self.n_devices, self.strategy = self.configure(
            model, n_devices, memory_bytes, strategy, devices_per_node)
        self.memory_bytes = memory_bytes

    @classmethod
    def configure(cls, model, n_devices, memory_bytes, strategy, devices_per_node=None):
        """Every check of a setting, before any work: ``(model, N, strategy object)``. The
        trainer calls it too, so a bad setting fails when the trainer is made."""
        n = check_n_devices(n_devices)
        s = get_strategy(strategy).for_engine(devices_per_node, cls.default_devices_per_node)
        model = build(model)
        if s.needs_links and not cls.links:
            raise ValueError(f"{cls.__name__} runs its devices one after another in one "
                             f"process, so they cannot send each other messages, and strategy "
                             f"{s.name!r} needs that: use engine 'local' or 'mpi', or strategy 'host'")
        s.check(n)
        check_fits(model, [1], memory_bytes)  # a device that cannot hold one sample is useless
        return model, n, s

    @staticmethod
    def default_devices_per_node():
        """G for a hierarchical all-reduce given none (MPI: the ranks that share a machine);
        None: this engine has no nodes of its own, the user must say."""
        return None

    # -- the protocol ---------------------------------------------------------------------
    def step(self, values, x, y, update=None):
        """One data-parallel step on ``(x, y)`` from parameters ``values``.

        ``update`` (an :class:`~mgpu_lab.engines.update.Update`) runs where the strategy
        says; without it the step stops at the gradient of the batch (``new_values`` and
        ``new_state`` are None).
        """
        if self.closed:
            raise EngineClosed(f"this {type(self).__name__} is closed{self.closes_itself}; "
                               f"create a new one")
        if update is not None and not isinstance(update, Update):
            raise TypeError(f"update must be an Update(optimizer, state, t) from "
                            f"mgpu_lab.engines.update (or None for the gradient alone), got {update!r}")
        t0 = time.perf_counter()
        x, y = self.model.check_batch(x, y)
        bounds = split_bounds(len(x), self.n_devices)
        sizes = [b - a for a, b in bounds]
        on_devices = update is not None and not self.strategy.updates_on_host
        check_fits(self.model, sizes, self.memory_bytes,  # before any work: nothing half-done
                   update.optimizer.name if on_devices else "sgd",
                   self.strategy.zero_stage if on_devices else 0)
        if values is None and self.strategy.updates_on_host:
            raise ValueError(f"strategy {self.strategy.name!r} updates on the host: pass the "
                             f"parameters to step from (values=None means the devices' own)")
        t = Timings(split=time.perf_counter() - t0)
        losses, device_seconds, view, norms = self._run_devices(values, x, y, bounds, update, t)
        loss = stack_losses(losses, sizes)
        if self.strategy.updates_on_host:
            grads, new_values, new_state = self._run_host(view, sizes, values, update, loss, t)
            batch_sq_norm = view.batch_sq_norm
        else:  # the devices hold the result; the gradient alone is read back when asked for
            grads = self.step_gradient() if update is None else None
            new_values = new_state = None
            batch_sq_norm = float(sum(part for _, part in norms))
        t.total = time.perf_counter() - t0
        return StepResult(loss, grads, new_values, new_state, sizes, list(device_seconds), t,
                          getattr(self, "last_bytes", None),
                          [float(split) for split, _ in norms], batch_sq_norm)

    def gradients(self, values, x, y):
        """The gradient of the batch's mean loss: a list of arrays shaped like the params."""
        return self.step(values, x, y).grads

    # -- what an engine supplies ----------------------------------------------------------
    def _run_devices(self, values, x, y, bounds, update, t):
        """Every device: the gradient of its split ``x[a:b]``, then ``strategy.on_device``
        over this engine's transport. ``(losses, device_seconds, view, norms)``, where
        ``view`` (a :class:`~mgpu_lab.engines.strategies.HostView`) is what the host reads
        and ``norms`` one ``(|g_i|^2, batch part)`` per device (``Device.sq_norms``)."""
        raise NotImplementedError

    def _run_host(self, view, sizes, values, update, loss, t):
        """``strategy.on_host``: stack and update, or read back. Timed as the update."""
        t0 = time.perf_counter()
        out = self.strategy.on_host(view, sizes, values, update, loss, t)
        t.update += time.perf_counter() - t0 - t.stack
        return out

    def step_gradient(self):
        """After a step without update on the devices: the batch gradient they hold."""
        raise NotImplementedError

    def state_dict(self, slots=None):
        """The devices' parameters and ``slots`` arrays of optimizer state per parameter,
        consolidated on the host: ``{"values", "state"}`` (None where the host holds them)."""
        raise NotImplementedError

    def load_state_dict(self, sd):
        """Give the devices ``sd["values"]`` and their parts of ``sd["state"]``."""
        raise NotImplementedError

    def device_memory(self):
        """Bytes each device holds: a list of ``{"parameters", "gradients", "optimizer",
        "scratch"}``, counted from the arrays the devices hold."""
        raise NotImplementedError

    # -- lifetime -------------------------------------------------------------------------
    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
