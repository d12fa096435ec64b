"""The reference engine: N simulated devices run one after another in this process."""
import time

import numpy as np

from .base import Engine

__all__ = ["SerialEngine"]


class SerialEngine(Engine):
    """N devices, one after another, in this process: same maths, no parallelism."""

    def __init__(self, model, n_devices=1, memory_bytes=None):
        super().__init__(model, n_devices, memory_bytes)
        self._fn = None

    def _compute(self, values, x, y, bounds, update, t):
        self._fn = self._fn or self.model.loss_and_gradients_function()  # compiled once
        self.model.set_values(values)
        losses, grads, secs = [], [], []
        for a, b in bounds:
            t0 = time.perf_counter()
            loss, *g = self._fn(x[a:b], y[a:b])
            secs.append(time.perf_counter() - t0)
            losses.append(float(loss))
            grads.append([np.array(v) for v in g])  # Theano may reuse its output buffers
        t.compute = sum(secs)
        return losses, secs, grads
