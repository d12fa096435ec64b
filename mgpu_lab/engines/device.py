"""One simulated GPU, long-lived: what it holds between steps and what it does in one.

A :class:`Device` is made once per worker process of the pool and once per MPI rank, and
lives as long as they do. It owns what a GPU would hold (design.md, "where the state
lives"):

    params   floatX[P]          its replica; the model's Theano shared variables are views
                                of it, so a new value never needs a second copy
    grad     floatX[P]          its gradient, then its work buffer in an exchange
    state    floatX[S, b - a]   its optimizer state: all of it (ring, hierarchical), its
                                1/N shard (sharded), none (host: the host keeps it)
    the link's scratch          sized once by the strategy: one message (MPI: a ring chunk),
                                or one mailbox packet of at most PACKET floats (the pool)

One step: compute the gradient of its split, copy it out of Theano into ``grad`` (the
fetch, which also takes |g_i|^2: one pass over P, no copy), then
``strategy.on_device(link, self)``: the exchange, and the update where the devices
update. After the exchange a device that updates takes |g|^2 over its ``norm_range`` of
the reduced gradient (its ring chunk where every device holds the whole sum, its shard for
the sharded optimizer); the host sums those parts (the gradient noise scale's inputs,
:mod:`mgpu_lab.statistics`). Only these floats cross, never a second gradient. The
update runs on blocks of ``BLOCK`` floats, in place, so nothing of size P is allocated
per step, and the rule's temporaries stay a few MiB.

What each phase of :class:`~mgpu_lab.engines.base.Timings` means is written there, once.
"""
import time

import numpy as np

from .._theano import floatX
from ..errors import DeviceStateLost, NonFiniteGradient
from .update import flatten, unflatten

__all__ = ["Device", "BLOCK"]

BLOCK = 2 ** 18  # floats per block of the update (1 MiB): SGD, momentum, Adam are elementwise


class Device:
    """Device ``rank`` of ``size``: a built ``model`` (its own graph), a ``strategy`` and a
    ``link``. ``params`` / ``grad``: buffers the transport provides (the pool's host gather
    uses shared memory the host writes and reads), else the device allocates its own."""

    def __init__(self, rank, size, model, strategy, link, params=None, grad=None):
        self.rank, self.size, self.strategy, self.link = rank, size, strategy, link
        carries = np.dtype(getattr(link, "wire_dtype", floatX))  # MPI's link: float32 only
        if strategy.needs_links and np.dtype(strategy.wire_dtype) != carries:
            raise ValueError(f"{strategy!r} sends {strategy.wire_dtype} between devices; this "
                             f"transport carries {carries} only (use the pool: "
                             f"engine='local')")
        self.fn = model.loss_and_gradients_function()  # each device compiles its own
        self.shapes, self.input_shape = model.param_shapes, model.input_shape
        P = self.n_params = model.n_params
        self.params = np.empty(P, floatX) if params is None else params
        flatten(model.get_values(), out=self.params)
        for p, view in zip(model.params, unflatten(self.params, self.shapes)):
            p.set_value(view, borrow=True)  # Theano reads the replica itself
        self.grad = np.empty(P, floatX) if grad is None else grad
        self.state_range = strategy.state_range(rank, size, P)
        self.state = None  # (slots, b - a), made at the first update or load
        self.update, self.weight, self.loss, self.lost = None, 1.0, 0.0, False
        self.seconds_update = 0.0
        self.split_sq_norm = 0.0  # |g_i|^2 of this device's mean gradient (last step)
        self.batch_sq_part = 0.0  # |g|^2 over its norm_range of the reduced gradient

    # -- what the host loads and reads, on demand -----------------------------------
    def load(self, params=None, state=None):
        """Set the replica from flat ``params`` (P,) and this device's part of the flat
        optimizer ``state`` (S, P); either may be None (kept)."""
        if params is not None:
            self.params[...] = params
        if state is not None:
            a, b = self.state_range
            self.state = np.array(state[:, a:b], dtype=floatX)  # (S, b - a), its own copy
        self.lost = False

    def export(self, params_out=None, state_out=None, grad_out=None):
        """Write this device's host range of the replica, of the state and of the gradient
        into the flat ``params_out`` (P,), ``state_out`` (S, P) and ``grad_out`` (P,) (the
        consolidation's gather)."""
        a, b = self.strategy.host_range(self.rank, self.size, self.n_params)
        if params_out is not None:
            params_out[a:b] = self.params[a:b]
        if grad_out is not None:
            grad_out[a:b] = self.grad[a:b]
        if state_out is not None and self.state is not None:
            c, _ = self.state_range
            state_out[:, a:b] = self.state[:, a - c:b - c]
        return b - a

    # -- one step ---------------------------------------------------------------------
    def step(self, x, y, weight, update):
        """Compute the gradient of the split ``(x, y)``, then the strategy's part. Returns
        ``(loss, seconds per phase)``; raises NonFiniteGradient (nothing changed) or
        DeviceStateLost (an update overflowed part-way: the replica is of no whole step)."""
        loss, times = self.compute(x, y)
        times.update(self.exchange(weight, update))
        return loss, times

    def compute(self, x, y):
        """The gradient of the split into ``grad``: ``(loss, {"compute", "fetch"})``."""
        if self.lost:
            raise DeviceStateLost(f"device {self.rank}: its state is of no whole step; load "
                                  f"parameters and state first")
        t0 = time.perf_counter()
        loss, *grads = self.fn(x, y)
        t1 = time.perf_counter()
        flatten(grads, out=self.grad)  # out of Theano's buffers into the one that travels
        self.split_sq_norm = float(np.dot(self.grad, self.grad))  # BLAS sdot: no temporary
        self.loss = float(loss)
        return self.loss, {"compute": t1 - t0, "fetch": time.perf_counter() - t1}

    def exchange(self, weight, update):
        """The strategy's part after the gradient: ``{"sync", "exchange", "update"}``."""
        self.update, self.weight, self.seconds_update = update, weight, 0.0
        if update is not None and self.state is None:
            a, b = self.state_range
            self.state = np.zeros((update.optimizer.slots, b - a), floatX)  # every rule starts at 0
        t0, waited = time.perf_counter(), self.link.waited
        self.strategy.on_device(self.link, self)
        self.batch_sq_part = self._batch_sq_part()
        spent, waited = time.perf_counter() - t0, self.link.waited - waited
        return {"sync": waited, "exchange": max(0.0, spent - self.seconds_update - waited),
                "update": self.seconds_update}

    def _batch_sq_part(self):
        """|g|^2 over this device's ``norm_range`` of the reduced gradient, sum_i (n_i/B) g_i,
        which ``grad`` holds there after a device-side exchange (an update reads it, never
        writes it). The host gather's devices hold only their own g_i: 0, the host takes it."""
        a, b = self.strategy.norm_range(self.rank, self.size, self.n_params)
        return float(np.dot(self.grad[a:b], self.grad[a:b])) if b > a else 0.0

    @property
    def sq_norms(self):
        """``(|g_i|^2, batch part)`` of the last step: the floats that cross to the host."""
        return self.split_sq_norm, self.batch_sq_part

    # -- what strategies call ---------------------------------------------------------
    @property
    def has_update(self):
        return self.update is not None

    def scale_gradient(self):
        """(n_i / B) g_i, as stack_gradients weighs it. A non-finite loss poisons the
        gradient (NaN travels through every sum), so every device refuses the step alike."""
        self.grad *= self.weight
        if not np.isfinite(self.loss):
            self.grad[:1] = np.nan

    def finite(self, a, b):
        """[a, b) of the gradient is finite (checked block by block: no P-sized mask)."""
        return all(np.isfinite(self.grad[i:min(b, i + BLOCK)]).all() for i in range(a, b, BLOCK))

    def refuse(self):
        label = self.update.label if self.update else "this step"
        raise NonFiniteGradient(f"{label}: the gradient (or loss {self.loss}) is NaN or "
                                f"infinite; parameters left untouched (lower the learning "
                                f"rate or check the data)")

    def refuse_if_not_finite(self, a, b):
        """Refuse before anything changes: after an all-reduce every device holds the same
        gradient, so every device decides alike."""
        if not self.finite(a, b):
            self.refuse()

    def update_range(self, a, b):
        """The rule on [a, b) of the replica, in place, with that range's state, block by
        block. An overflowing update leaves the replica of no whole step: DeviceStateLost."""
        if self.update is None:
            return
        t0, c = time.perf_counter(), self.state_range[0]
        rule, t = self.update.optimizer.rule, self.update.t
        for i in range(a, b, BLOCK):
            j = min(b, i + BLOCK)
            state = [[slot[i - c:j - c]] for slot in self.state]
            new, new_state = rule([self.params[i:j]], [self.grad[i:j]], state, t)
            if not np.isfinite(new[0]).all():
                self.lost = True
                raise DeviceStateLost(
                    f"{self.update.label}: the update produced NaN or infinite parameters on "
                    f"device {self.rank}, which updates in place; its replica is of no whole "
                    f"step (the trainer restarts from its last snapshot)")
            self.params[i:j] = new[0]
            for slot, s in zip(self.state, new_state):
                slot[i - c:j - c] = s[0]
        self.seconds_update += time.perf_counter() - t0

    def held(self):
        """Bytes this device holds between steps, counted from its arrays: parameters,
        gradient, optimizer state, the link's scratch."""
        return {"parameters": self.params.nbytes, "gradients": self.grad.nbytes,
                "optimizer": 0 if self.state is None else self.state.nbytes,
                "scratch": self.link.scratch_bytes}
