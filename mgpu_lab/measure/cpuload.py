"""How much CPU *other* processes used while we measured: a noisy neighbour detector."""
import time

import psutil

__all__ = ["CpuMeter"]


class CpuMeter:
    """CPU time used by *other* processes while we measure, in cores (0 = a quiet machine).

    System-wide busy time (psutil) minus the CPU time of this process and of ``pids``,
    over the wall time. A row with foreign load above ~0.1 core is not trustworthy.
    """

    def __init__(self, pids):
        self.procs = [psutil.Process()] + [psutil.Process(p) for p in pids]
        self.psutil, self.busy, self.own, self.wall = psutil, 0.0, 0.0, 0.0

    def _now(self):
        t = self.psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        own = sum(sum(p.cpu_times()[:2]) for p in self.procs)
        return busy, own, time.perf_counter()

    def __enter__(self):
        self._start = self._now()
        return self

    def __exit__(self, *exc):
        end = self._now()
        self.busy += end[0] - self._start[0]
        self.own += end[1] - self._start[1]
        self.wall += end[2] - self._start[2]

    @property
    def foreign_cores(self):
        return max(0.0, self.busy - self.own) / self.wall if self.wall else 0.0
