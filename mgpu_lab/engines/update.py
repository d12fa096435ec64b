"""What travels with a step besides the batch: flat parameter vectors and the update.

    flatten / unflatten   a parameter list <-> one flat floatX vector (views, no copy back)
    Update                the optimizer (a pure rule), its state arrays, t, a label
    apply_update          the rule, refusing NaN or infinite losses, gradients, results
    DeviceStep            one device's buffers in a step, as a strategy's on_device sees them

Strategies (strategies.py) and engines both use these; nothing here knows either.
"""
import time
from dataclasses import dataclass

import numpy as np

from .._theano import floatX
from ..errors import NonFiniteGradient
from ..gradients import all_finite

__all__ = ["flatten", "unflatten", "Update", "apply_update", "DeviceStep"]


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


@dataclass
class Update:
    """One step's update: ``optimizer`` (a pure rule), its ``state`` ([slot][param] arrays,
    ``optimizer.init_state(values)`` before the first step), ``t`` (updates so far) and
    the ``label`` that names the step in errors."""

    optimizer: object
    state: list
    t: int = 0
    label: str = "this step"

    def for_devices(self):
        """Picklable for devices in other processes: this step's rate frozen (``optimizer.at``),
        without the state, which travels through the engine's own buffers."""
        return Update(self.optimizer.at(self.t), None, self.t, self.label)


def apply_update(update, values, grads, loss, state=None, check=True):
    """``(new_values, new_state)``: the update's rule on ``values`` (a whole parameter list,
    or one shard of the flat vector with its ``state``), refusing a step whose loss,
    gradient or result is not finite (:class:`NonFiniteGradient`). Pure: nothing to undo."""
    if check and (not np.isfinite(loss) or not all_finite(grads)):
        raise NonFiniteGradient(
            f"{update.label}: the gradient (or loss {loss}) is NaN or infinite; parameters "
            f"left untouched (lower the learning rate or check the data)")
    new, new_state = update.optimizer.rule(values, grads, update.state if state is None else state,
                                           update.t)
    if check and not all_finite(new):
        raise NonFiniteGradient(f"{update.label}: the update produced NaN or infinite "
                                f"parameters; parameters left untouched")
    return new, new_state


class DeviceStep:
    """One device's part of a step, as ``strategy.on_device(link, dev)`` works on it.

    ``grad`` (P,): this device's gradient, then its work buffer; ``params`` (P,): the
    parameters it computed with; ``new`` (P,): where its update writes; ``state_in`` /
    ``state_out`` (slots, P): the optimizer state it reads and writes, used only in
    ``state_range`` (all of it, or its shard). Engines make one from their own buffers.
    """

    def __init__(self, grad, params, update, weight, loss, state_range, new=None,
                 state_in=None, state_out=None):
        self.grad, self.params, self.new, self.update = grad, params, new, update
        self.weight, self.loss, self.n_params = weight, loss, grad.size
        self.has_update, self.seconds_update = update is not None, 0.0
        self.scratch = np.empty(grad.size, floatX)  # what arrives from another device
        a, b = state_range
        self._state = [] if state_in is None else [state_in[k, a:b] for k in range(len(state_in))]
        self._state_in, self._state_out = state_in, state_out

    def update_range(self, a, b, check=True):
        """The rule on [a, b) of the flat parameters with that range's state; writes ``new``
        and ``state_out`` there and returns ``new``. Refuses (NonFiniteGradient) unless
        ``check`` is False, for strategies that must finish their exchange first."""
        if self.update is None:
            return None
        t0 = time.perf_counter()
        slots = 0 if self._state_in is None else len(self._state_in)
        state = [[self._state_in[k, a:b]] for k in range(slots)]
        new, st = apply_update(self.update, [self.params[a:b]], [self.grad[a:b]], self.loss,
                               state=state, check=check)
        self.new[a:b] = new[0]
        for k, slot in enumerate(st):
            self._state_out[k, a:b] = slot[0]
        self.seconds_update += time.perf_counter() - t0
        return self.new

    def check_finite(self, flat):
        """Refuse the step if ``flat`` (the gathered new parameters) or the loss is not finite."""
        if not np.isfinite(flat).all() or not np.isfinite(self.loss):
            raise NonFiniteGradient(f"{self.update.label}: the gradient or the update produced "
                                    f"NaN or infinite parameters; parameters left untouched")

    def held(self, params):
        """Bytes this device holds: its parameters (Theano shared variables), its gradient,
        its optimizer state."""
        return {"parameters": sum(p.get_value(borrow=True).nbytes for p in params),
                "gradients": self.grad.nbytes,
                "optimizer": sum(s.nbytes for s in self._state) if self.has_update else 0}
