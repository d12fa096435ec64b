"""Soak test: many training steps on N local devices, watching every process for leaks.

A pool that leaks shows it only over many steps: resident memory (RSS) that creeps up, or
open file descriptors (pipes, shared-memory blocks) that are never closed. :func:`run`
trains for ``steps`` steps and, every ``sample_every`` steps, records the RSS and the
number of open file descriptors of the parent and of each device's worker process.

    result = soak.run(steps=1000, n_devices=4)
    result.growth(after_step=100)   # {"parent": (rss bytes, fds), "device 0": ...}

The parent's RSS includes ``trainer.history``, which grows by one small dict per step by
design (0.7 KiB by ``sys.getsizeof``); :attr:`SoakResult.history_bytes` says how much of the growth that
is, and ``keep_history=False`` empties it after every step to see the library alone.
"""
import os
import sys
import time
from dataclasses import dataclass, field

import psutil
from tqdm.auto import tqdm

from ..data import random_batch
from ..models import build
from ..optim import Momentum
from ..presets import SOAK_MODEL
from ..trainer import DataParallelTrainer, batch_indices

__all__ = ["SoakResult", "run", "process_usage"]


@dataclass
class SoakResult:
    """Samples of RSS (bytes) and open fds, per process, taken after the given steps."""

    model: str
    n_devices: int
    batch_size: int
    steps: list = field(default_factory=list)  # steps completed at each sample
    rss: dict = field(default_factory=dict)  # "parent" / "device i" -> [bytes, ...]
    fds: dict = field(default_factory=dict)  # the same labels -> [open fds, ...]
    seconds: float = 0.0  # wall time of the steps (the pool's start not included)
    history_bytes: int = 0  # size of trainer.history at the end (part of the parent's RSS)

    def _first(self, after_step):
        """Index of the first sample at or after ``after_step`` (the end of the warm-up)."""
        first = next((i for i, s in enumerate(self.steps) if s >= after_step), None)
        if first is None:
            raise ValueError(f"no sample at or after step {after_step}; the last is at step "
                             f"{self.steps[-1] if self.steps else None}")
        return first

    def growth(self, after_step=0):
        """``{label: (rss growth in bytes, fd growth)}`` from the first sample at or after
        ``after_step`` to the last sample."""
        first = self._first(after_step)
        return {k: (self.rss[k][-1] - self.rss[k][first], self.fds[k][-1] - self.fds[k][first])
                for k in self.rss}

    def table(self, after_step=0):
        """A plain-text table: per process, RSS and fds at the window's ends and the growth."""
        first = self._first(after_step)
        lines = [f"{self.steps[-1]} steps of {self.model} on {self.n_devices} devices, batch "
                 f"{self.batch_size}, {self.seconds:.1f} s; window: step {self.steps[first]} "
                 f"-> {self.steps[-1]}",
                 f"{'process':<10} {'RSS start MiB':>13} {'RSS end MiB':>11} {'growth KiB':>10} "
                 f"{'fds start':>9} {'fds end':>7}"]
        for k in self.rss:
            r0, r1 = self.rss[k][first], self.rss[k][-1]
            lines.append(f"{k:<10} {r0 / 2**20:>13.1f} {r1 / 2**20:>11.1f} "
                         f"{(r1 - r0) / 2**10:>10.0f} {self.fds[k][first]:>9} {self.fds[k][-1]:>7}")
        lines.append(f"(trainer.history at the end: {self.history_bytes / 2**10:.0f} KiB of the "
                     f"parent's RSS)")
        return "\n".join(lines)


def process_usage(pid):
    """(resident bytes, open file descriptors) of process ``pid``."""
    p = psutil.Process(pid)
    return p.memory_info().rss, p.num_fds()


def _history_bytes(history):
    """Approximate bytes held by ``history``: the list, its dicts, their values, and each
    record's :class:`~mgpu_lab.engines.base.Timings` with its fields."""
    total = sys.getsizeof(history)
    for h in history:
        total += sys.getsizeof(h) + sum(sys.getsizeof(v) for v in h.values())
        total += sum(sys.getsizeof(v) for v in vars(h["timings"]).values())
        total += sys.getsizeof(vars(h["timings"]))
    return total  # keys are interned strings shared by every entry


def run(steps=1000, n_devices=4, model=None, batch_size=64, sample_every=50, seed=0,
        keep_history=True, progress=True):
    """Train ``steps`` steps on ``n_devices`` local devices; sample RSS and fds as it goes.

    ``model`` (a Model or ModelSpec) defaults to the digits MLP (64-64-10). Samples are taken after step 1
    (the pool is up and compiled) and after every ``sample_every`` steps. Each step draws a
    new batch from ``4 * batch_size`` random samples, as ``fit`` would. ``keep_history=False`` empties
    ``trainer.history`` after every step. Returns a :class:`SoakResult`.
    """
    if steps < 1 or sample_every < 1:
        raise ValueError(f"steps and sample_every must be >= 1, got {steps} and {sample_every}")
    model = build(SOAK_MODEL if model is None else model)
    x, y = random_batch(model, 4 * batch_size, seed)  # 4 batches an epoch, reshuffled every epoch
    result = SoakResult(model.spec.describe(), n_devices, batch_size)
    with DataParallelTrainer(model.spec, n_devices, Momentum(0.01), engine="local") as tr:
        for step in tqdm(range(steps), disable=not progress, desc="soak", unit="step"):
            idx = batch_indices(step, len(x), batch_size, seed)
            tr.step(x[idx], y[idx])
            if not keep_history:
                tr.history.clear()
            if step == 0:
                t0, pids = time.perf_counter(), tr.engine.pids()  # the pool is up
            if step == 0 or (step + 1) % sample_every == 0 or step + 1 == steps:
                _sample(result, step + 1, pids)
        result.seconds = time.perf_counter() - t0
        result.history_bytes = _history_bytes(tr.history)
    return result


def _sample(result, step, pids):
    result.steps.append(step)
    for label, pid in [("parent", os.getpid())] + [(f"device {d}", p) for d, p in enumerate(pids)]:
        rss, fds = process_usage(pid)
        result.rss.setdefault(label, []).append(rss)
        result.fds.setdefault(label, []).append(fds)
