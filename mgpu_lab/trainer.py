"""The whole data-parallel step, a fit loop, history, and checkpoints.

    loss = trainer.step(x, y):
        values = host params                       (the one shared variable per param)
        result = engine.gradients(values, x, y)    split -> N devices -> stack
        new    = optimizer.update(values, grads)   on the host
        host params <- new                         (all at once, only if all is finite)
"""
import json
import os
import time
from pathlib import Path

import numpy as np

from .engine import SerialEngine, check_fits
from .errors import CheckpointError, NonFiniteGradient
from .gradients import all_finite
from .models import ModelSpec, build
from .optim import SGD, make_optimizer
from .validate import check_n_devices

__all__ = ["DataParallelTrainer", "ENGINES", "batch_indices"]

ENGINES = ("local", "serial", "mpi")
_FORMAT = 1


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
    """Train ``model_spec`` on ``n_devices`` with ``engine`` ('local', 'serial' or 'mpi')."""

    def __init__(self, model_spec, n_devices=1, optimizer=None, engine="local",
                 memory_bytes=None, seed=0, strategy="host"):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self.model = build(model_spec)  # host copy: the parameters live here
        self.spec = self.model.spec
        self.n_devices = check_n_devices(n_devices)
        self.optimizer = optimizer or SGD(0.1)
        self.engine_name, self.strategy = engine, strategy
        self.memory_bytes, self.seed = memory_bytes, seed
        check_fits(self.model, [1], memory_bytes)  # now, not at the first step: one sample must fit
        self.history, self.step_count, self._engine = [], 0, None

    # -- engines ------------------------------------------------------------------
    def _make_engine(self):
        if self.engine_name == "serial":
            return SerialEngine(self.spec, self.n_devices, self.memory_bytes)
        if self.engine_name == "local":
            from .devices import DevicePool
            return DevicePool(self.spec, self.n_devices, self.memory_bytes)
        from .mpi import MPIEngine
        return MPIEngine(self.spec, self.n_devices, self.memory_bytes, strategy=self.strategy)

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
        values = self.model.get_values()
        if hasattr(self.engine, "step"):  # MPI: the engine runs the update where its strategy says
            result, new_values = self.engine.step(values, x, y, self._checked_update)
        else:
            result = self.engine.gradients(values, x, y)
            new_values = self._checked_update(values, result)
        self.model.set_values(new_values)
        seconds = time.perf_counter() - t0
        self.history.append({"step": self.step_count, "loss": result.loss, "seconds": seconds,
                             "images_per_s": len(x) / seconds, **{f"t_{k}": v for k, v in result.breakdown.items()}})
        self.step_count += 1
        return result.loss

    def _checked_update(self, values, result):
        """The optimizer's new values, or NonFiniteGradient (parameters left untouched)."""
        if not np.isfinite(result.loss) or not all_finite(result.grads):
            raise NonFiniteGradient(
                f"step {self.step_count}: the gradient (or loss {result.loss}) is NaN or "
                f"infinite; parameters left untouched (lower the learning rate or check the data)")
        before = self.optimizer.state, self.optimizer.t  # update() replaces both, never mutates
        new_values = self.optimizer.update(values, result.grads)
        if not all_finite(new_values):
            self.optimizer.state, self.optimizer.t = before  # the optimizer forgets this step too
            raise NonFiniteGradient(f"step {self.step_count}: the update produced NaN or "
                                    f"infinite parameters; parameters left untouched")
        return new_values

    def fit(self, x, y, batch_size=64, steps=None, epochs=None, progress=True, data_seed=0):
        """Train for ``steps`` steps (or ``epochs`` epochs) on shuffled batches of (x, y).

        Batch order depends only on ``data_seed`` and the global step, so fitting K steps,
        saving, loading and fitting K more equals fitting 2K steps. Returns ``history``.
        """
        from tqdm.auto import tqdm
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
        f = self.model.loss_function()
        totals = np.zeros(2)
        for a in range(0, len(x), batch_size):
            loss, acc = f(x[a:a + batch_size], y[a:a + batch_size])
            totals += np.array([loss, acc]) * len(x[a:a + batch_size])
        return tuple(totals / len(x))

    # -- checkpoints ----------------------------------------------------------------
    def save(self, path):
        """Write params, optimizer state, step and history atomically (temp file + rename)."""
        path = Path(path)
        opt = self.optimizer.state_dict()
        meta = {"format": _FORMAT, "spec": [self.spec.name, list(map(list, self.spec.kwargs))],
                "step": self.step_count, "optimizer": opt["name"], "t": opt["t"],
                "n_slots": len(opt["state"]), "history": self.history}
        arrays = {f"param_{i}": v for i, v in enumerate(self.model.get_values())}
        for s, slot in enumerate(opt["state"]):
            arrays.update({f"opt_{s}_{i}": a for i, a in enumerate(slot)})
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half
        except BaseException:
            tmp.unlink(missing_ok=True)  # a failed save leaves the old file and nothing else
            raise
        _fsync_dir(path.parent)  # make the rename itself survive a power cut
        return path

    def load(self, path):
        """Restore a checkpoint written by :meth:`save` for this same model.

        Everything is checked before anything is set: a refused file changes nothing.
        """
        meta, arrays = _read_checkpoint(path)
        if meta["spec"] != self.spec:
            raise CheckpointError(f"{path} holds a checkpoint of {meta['spec'].describe()}, but "
                                  f"this trainer trains {self.spec.describe()}")
        if meta["optimizer"] != self.optimizer.name:
            raise CheckpointError(f"{path} holds the state of optimizer {meta['optimizer']!r}, "
                                  f"but this trainer uses {self.optimizer.name!r}")
        names = [p.name for p in self.model.params]
        try:
            values = [arrays[f"param_{i}"] for i in range(len(names))]
            state = [[arrays[f"opt_{s}_{i}"] for i in range(len(names))] for s in range(meta["n_slots"])]
        except KeyError as e:
            raise CheckpointError(f"{path} lacks the array {e}: not a checkpoint of this model") from None
        for i, (name, shape) in enumerate(zip(names, self.model.param_shapes)):
            for a in [values[i]] + [slot[i] for slot in state]:
                if a.shape != shape:
                    raise CheckpointError(f"{path} does not match this model: parameter {name} "
                                          f"is {shape} here but {a.shape} in the file")
        self.optimizer.load_state_dict({"name": meta["optimizer"], "t": meta["t"], "state": state})
        self.model.set_values(values)
        self.step_count, self.history = meta["step"], meta["history"]
        return self

    def close(self):
        if self._engine is not None:
            self._engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tuplify(v):
    return tuple(_tuplify(a) for a in v) if isinstance(v, list) else v


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_checkpoint(path):
    """(meta dict, {name: array}) of a checkpoint, or a CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
        fmt = meta["format"]
        if fmt == _FORMAT:
            name, kwargs = meta["spec"]
            meta["spec"] = ModelSpec(name, tuple((k, _tuplify(v)) for k, v in kwargs))
            missing = {"step", "optimizer", "t", "n_slots", "history"} - set(meta)
            if missing:
                raise KeyError(f"meta lacks {', '.join(sorted(missing))}")
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, KeyError...
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt, or not "
                              f"written by DataParallelTrainer.save): {type(e).__name__}: {e}") from e
    if fmt != _FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {fmt}, expected {_FORMAT}")
    return meta, arrays


def make_trainer(model_spec, n_devices, engine="local", optimizer="sgd", lr=0.1, **kwargs):
    """Convenience: a trainer with an optimizer given by name."""
    return DataParallelTrainer(model_spec, n_devices, make_optimizer(optimizer, lr), engine, **kwargs)
