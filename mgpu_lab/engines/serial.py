"""The reference engine: N simulated devices run one after another in this process.

It has no transport between devices (they never run at the same time), so it runs the
strategies that need none: the host gather.
"""
import time

import numpy as np

from .._theano import floatX
from .base import Engine, flatten
from .strategies import HostView

__all__ = ["SerialEngine"]


class SerialEngine(Engine):
    """N devices, one after another, in this process: same maths, no parallelism."""

    def __init__(self, model, n_devices=1, memory_bytes=None, strategy="host",
                 devices_per_node=None):
        super().__init__(model, n_devices, memory_bytes, strategy, devices_per_node)
        self._fn, self._rows = None, None

    def _run_devices(self, values, x, y, bounds, update, t):
        self._fn = self._fn or self.model.loss_and_gradients_function()  # compiled once
        self.model.set_values(values)
        if self._rows is None:
            self._rows = np.empty((self.n_devices, self.model.n_params), floatX)  # (N, P)
        losses, secs, norms = [], [], []
        for d, (a, b) in enumerate(bounds):
            t0 = time.perf_counter()
            loss, *g = self._fn(x[a:b], y[a:b])
            secs.append(time.perf_counter() - t0)
            losses.append(float(loss))
            row = flatten(g, out=self._rows[d])  # Theano may reuse its output buffers: copy out
            norms.append((float(np.dot(row, row)), 0.0))  # |g_i|^2; the host takes |g|^2
        t.compute = sum(secs)
        view = HostView(self.n_devices, self.model.param_shapes, grad=self._rows.__getitem__)
        return losses, secs, view, norms

    def state_dict(self, slots=None):
        return {"values": None, "state": None}  # the host gather: the host holds both

    def load_state_dict(self, sd):
        pass  # nothing lives on these devices between steps

    def device_memory(self):
        params = sum(p.get_value(borrow=True).nbytes for p in self.model.params)
        grads = 0 if self._rows is None else self._rows[0].nbytes
        return [{"parameters": params, "gradients": grads, "optimizer": 0, "scratch": 0}
                for _ in range(self.n_devices)]  # the host gather keeps the state on the host
