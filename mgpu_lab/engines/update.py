"""What travels with a step besides the batch: flat parameter vectors and the update.

    flatten / unflatten   a parameter list <-> one flat floatX vector (views, no copy back)
    Update                the optimizer (a pure rule), its state arrays, t, a label
    apply_update          the rule, refusing NaN or infinite losses, gradients, results

Strategies (strategies.py) and engines both use these; nothing here knows either.
"""
from dataclasses import dataclass

import numpy as np

from .._theano import floatX
from ..errors import NonFiniteGradient
from ..gradients import all_finite

__all__ = ["flatten", "unflatten", "Update", "apply_update"]


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
    state: list  # None: the devices' own (a strategy that updates on the devices)
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
