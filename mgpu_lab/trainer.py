"""The whole data-parallel step, a fit loop and its history; checkpoints via checkpoint.py.

    loss = trainer.step(x, y):
        values = host params                          (the one shared variable per param)
        result = engine.step(values, x, y, update)    split -> N devices -> exchange -> update
        host params <- result.new_values              (all at once, only if all is finite)

One device is N=1 of the same path; every engine follows the same protocol
(:class:`mgpu_lab.engines.base.Engine`). The trainer keeps the optimizer's state (plain
arrays) and t; each step hands them to the engine in an
:class:`~mgpu_lab.engines.update.Update` and takes the new state back from the result,
wherever the strategy ran the update (the host, every device, or every device's shard).
"""
import time

import numpy as np
from tqdm.auto import tqdm

from .checkpoint import read_checkpoint, save_checkpoint
from .engines.base import Timings
from .engines.local import DevicePool
from .engines.mpi import MPIEngine
from .engines.serial import SerialEngine
from .engines.update import Update
from .errors import CheckpointError
from .optim import SGD, state_dict

__all__ = ["DataParallelTrainer", "ENGINES", "batch_indices"]

ENGINES = {"local": DevicePool, "serial": SerialEngine, "mpi": MPIEngine}


def batch_indices(step, n_samples, batch_size, seed):
    """Sample indices of global step ``step``: a fresh permutation every epoch.

    Derived from (seed, step) alone, so a resumed run sees exactly the batches an
    uninterrupted run would have seen.
    """
    per_epoch = n_samples // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the data set ({n_samples} samples)")
    epoch, b = divmod(step, per_epoch)
    order = np.random.RandomState([seed, epoch]).permutation(n_samples)
    return order[b * batch_size:(b + 1) * batch_size]


class DataParallelTrainer:
    """Train ``model`` (a Model or a ModelSpec) on ``n_devices`` with ``engine`` ('local',
    'serial' or 'mpi') and ``strategy`` (a name in ``engines.strategies.STRATEGIES`` or a
    strategy object; ``devices_per_node`` for 'hierarchical')."""

    def __init__(self, model, n_devices=1, optimizer=None, engine="local",
                 memory_bytes=None, seed=0, strategy="host", devices_per_node=None):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        # the engine's own checks, now rather than at the first step (the engine starts then)
        self.model, self.n_devices, self.strategy = ENGINES[engine].configure(
            model, n_devices, memory_bytes, strategy, devices_per_node)
        self.spec = self.model.spec  # the host copy: the parameters live here
        self.optimizer = optimizer or SGD(0.1)
        self.opt_state = self.optimizer.init_state(self.model.get_values())  # plain arrays
        self.opt_t = 0  # updates applied so far
        self.engine_name, self.memory_bytes, self.seed = engine, memory_bytes, seed
        self.history, self.step_count, self._engine = [], 0, None

    # -- engines ------------------------------------------------------------------
    def _make_engine(self):
        return ENGINES[self.engine_name](self.spec, self.n_devices, self.memory_bytes,
                                         strategy=self.strategy)

    @property
    def engine(self):
        """The engine, (re)started on demand: after a crash the next step starts afresh."""
        if self._engine is None or self._engine.closed:
            self._engine = self._make_engine()
        return self._engine

    # -- training -------------------------------------------------------------------
    def step(self, x, y):
        """One data-parallel step on the batch ``(x, y)``; returns the batch's mean loss."""
        t0 = time.perf_counter()
        update = Update(self.optimizer, self.opt_state, self.opt_t, f"step {self.step_count}")
        result = self.engine.step(self.model.get_values(), x, y, update)
        self.model.set_values(result.new_values)
        if result.new_state is not None:  # None on MPI ranks that do not hold the state
            self.opt_state = result.new_state
        self.opt_t += 1
        seconds = time.perf_counter() - t0
        self.history.append({"step": self.step_count, "loss": result.loss, "seconds": seconds,
                             "images_per_s": len(x) / seconds, "timings": result.timings})
        self.step_count += 1
        return result.loss

    def fit(self, x, y, batch_size=64, steps=None, epochs=None, progress=True, data_seed=0):
        """Train for ``steps`` steps (or ``epochs`` epochs) on shuffled batches of (x, y).

        Batch order depends only on ``data_seed`` and the global step, so fitting K steps,
        saving, loading and fitting K more equals fitting 2K steps. Returns ``history``.
        """
        if (steps is None) == (epochs is None):
            raise ValueError("give exactly one of steps= or epochs=")
        steps = steps if steps is not None else epochs * (len(x) // batch_size)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        bar = tqdm(total=steps, disable=not progress, desc=f"{self.n_devices} device(s)", unit="step")
        try:
            for _ in range(steps):
                idx = batch_indices(self.step_count, len(x), batch_size, data_seed)
                loss = self.step(x[idx], y[idx])
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
        except KeyboardInterrupt:
            self.close()  # workers may be mid-step: stop them all; params are from the last full step
            raise
        finally:
            bar.close()
        return self.history

    def evaluate(self, x, y, batch_size=512):
        """(mean loss, accuracy) of the current parameters, computed on the host."""
        x, y = self.model.check_batch(x, y)
        f = self.model.loss_and_accuracy_function()
        totals = np.zeros(2)
        for a in range(0, len(x), batch_size):
            loss, acc = f(x[a:a + batch_size], y[a:a + batch_size])
            totals += np.array([loss, acc]) * len(x[a:a + batch_size])
        return tuple(totals / len(x))

    # -- checkpoints (mgpu_lab.checkpoint) ------------------------------------------------
    def save(self, path):
        """Write params, optimizer state, step and history atomically; returns the path."""
        history = [{**h, "timings": h["timings"].as_dict()} for h in self.history]
        return save_checkpoint(path, self.spec, self.model.get_values(),
                               state_dict(self.optimizer, self.opt_state, self.opt_t),
                               self.step_count, history)

    def load(self, path):
        """Restore a checkpoint written by :meth:`save` for this same model.

        Everything is checked before anything is set: a refused file changes nothing.
        """
        ck = read_checkpoint(path)
        if ck.spec != self.spec:
            raise CheckpointError(f"{path} holds a checkpoint of {ck.spec.describe()}, but "
                                  f"this trainer trains {self.spec.describe()}")
        if ck.optimizer_state["name"] != self.optimizer.name:
            raise CheckpointError(f"{path} holds the state of optimizer "
                                  f"{ck.optimizer_state['name']!r}, but this trainer uses "
                                  f"{self.optimizer.name!r}")
        names, shapes = [p.name for p in self.model.params], self.model.param_shapes
        if not ck.optimizer_state["state"] and ck.optimizer_state["t"] == 0:  # saved before any
            ck.optimizer_state["state"] = self.optimizer.init_state(ck.values)  # update: zeros
        if len(ck.optimizer_state["state"]) != self.optimizer.slots:
            raise CheckpointError(f"{path} holds {len(ck.optimizer_state['state'])} state arrays "
                                  f"per parameter, but {self.optimizer.name} keeps "
                                  f"{self.optimizer.slots}: not a checkpoint of this optimizer")
        if len(ck.values) != len(names):
            raise CheckpointError(f"{path} holds {len(ck.values)} parameters, this model "
                                  f"{len(names)}: not a checkpoint of this model")
        for i, (name, shape) in enumerate(zip(names, shapes)):
            for a in [ck.values[i]] + [slot[i] for slot in ck.optimizer_state["state"]]:
                if a.shape != shape:
                    raise CheckpointError(f"{path} does not match this model: parameter {name} "
                                          f"is {shape} here but {a.shape} in the file")
        history = [{**h, "timings": Timings(**h["timings"])} for h in ck.history]
        self.opt_state = [list(slot) for slot in ck.optimizer_state["state"]]
        self.opt_t = int(ck.optimizer_state["t"])
        self.model.set_values(ck.values)
        self.step_count, self.history = ck.step, history
        return self

    def close(self):
        if self._engine is not None:
            self._engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

