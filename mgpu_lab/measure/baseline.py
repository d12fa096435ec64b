"""The benchmark's baseline: the compiled gradient function called bare, with no pool step
around it, by a device of the pool itself (pinned to one core, one BLAS thread), on the
pool's own worker loop and transport.

The same device measures the machine constants the cost model needs for this machine:
the copy bandwidth into shared memory and a message round trip over the pool's pipes.
"""
import time

import numpy as np

from ..data import random_batch
from ..engines.local import DevicePool

__all__ = ["BareCall"]


class BareCall:
    """A one-device pool whose worker runs the compiled gradient function bare, on request.

    It lives through the whole benchmark, so bare calls and pool steps alternate: a change
    of load on the machine affects both sides of the N=1 overhead alike.
    """

    def __init__(self, spec, max_batch):
        self.pool = DevicePool(spec, 1)
        self.x, self.y = random_batch(self.pool.model, max_batch)

    def seconds(self, batch_size, steps):
        """Seconds of each of ``steps`` bare calls on ``batch_size`` samples, in a row."""
        b = int(batch_size)
        return self.pool.probe("bare", b, int(steps), x=self.x[:b], y=self.y[:b])[0]

    def copy_bandwidth(self, n_bytes=None):
        """Bytes/s of copying the gradient (P floats) into shared memory."""
        return self.pool.probe("copy")[0]

    def round_trip(self, n=200):
        """Median seconds of one message to the device and its answer back."""
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.pool.probe("ping")
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    def pids(self):
        return self.pool.pids()

    def close(self):
        self.pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
