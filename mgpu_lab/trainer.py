"""The whole data-parallel step, a fit loop and its history; checkpoints via checkpoint.py.

    loss = trainer.step(x, y):
        host gather:  result = engine.step(host params, x, y, Update(opt, state, t))
                      host params, state <- result's (all at once, only if all is finite)
        the others:   result = engine.step(None, x, y, Update(opt, None, t))
                      the devices keep their replicas and state; the host's copy is stale

One device is N=1 of the same path; every engine follows the same protocol
(:class:`mgpu_lab.engines.base.Engine`). Under the host gather the trainer holds the
parameters and the optimizer's state (plain arrays), as the chapter's host does. Under
the strategies that update on the devices, the devices own them between steps (as in
PyTorch DDP and DeepSpeed ZeRO): ``trainer.model`` and ``trainer.opt_state`` consolidate
them on demand (``engine.state_dict()``), and every ``snapshot_every`` steps the trainer
keeps a consolidated snapshot. A device that dies takes its state with it: the next step
restarts the devices from that snapshot, and the error says how many steps were lost.

Each history record holds the step's ``loss``, ``seconds``, ``images_per_s`` and
``timings``, and the gradient noise scale's inputs and estimate (:mod:`mgpu_lab.statistics`):

    sq_norms      {"split_sizes": n_i, "split": |g_i|^2 per device, "batch": |g|^2}, as
                  the engine reported them (raw, one step)
    b_simple      B_simple = tr(Σ)/|G|^2 in samples, from exponential moving averages
                  (decay ``noise_beta`` per step) of the two unbiased estimators, as
                  McCandlish et al. (2018) track it; None with one device (no second
                  batch size), NaN while the averaged |G|^2 is not positive
    trace_sigma   the averaged tr(Σ) estimate, grad_sq the averaged |G|^2 (or None)
"""
import math
import time
import warnings

import numpy as np
from tqdm.auto import tqdm

from .checkpoint import read_checkpoint, save_checkpoint
from .engines.base import Timings
from .engines.local import DevicePool
from .engines.mpi import MPIEngine
from .engines.serial import SerialEngine
from .engines.update import Update
from .errors import CheckpointError, DeviceStateLost, WorkerDied
from .optim import SGD, state_dict
from .statistics import NoiseScaleEMA

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


def _copy_state(state):
    """A copy of an optimizer state ([slot][param] arrays), or None."""
    return None if state is None else [[a.copy() for a in slot] for slot in state]


class DataParallelTrainer:
    """Train ``model`` (a Model or a ModelSpec) on ``n_devices`` with ``engine`` ('local',
    'serial' or 'mpi') and ``strategy`` (a name in ``engines.strategies.STRATEGIES`` or a
    strategy object; ``devices_per_node`` for 'hierarchical'). ``snapshot_every``: steps
    between consolidated snapshots of the devices' state (what a lost device costs).
    ``noise_beta``: the decay per step of the noise scale's moving averages (module
    docstring; about 1/(1 - beta) steps of memory)."""

    def __init__(self, model, n_devices=1, optimizer=None, engine="local",
                 memory_bytes=None, seed=0, strategy="host", devices_per_node=None,
                 snapshot_every=10, noise_beta=0.95):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(f"snapshot_every must be a whole number of steps >= 1, got {snapshot_every!r}")
        # the engine's own checks, now rather than at the first step (the engine starts then)
        self._model, self.n_devices, self.strategy = ENGINES[engine].configure(
            model, n_devices, memory_bytes, strategy, devices_per_node)
        self.spec = self._model.spec  # the host copy
        self.optimizer = optimizer or SGD(0.1)
        self._opt_state = self.optimizer.init_state(self._model.get_values())  # plain arrays
        self.opt_t = 0  # updates applied so far
        self.engine_name, self.memory_bytes, self.seed = engine, memory_bytes, seed
        self.history, self.step_count, self._engine = [], 0, None
        self.snapshot_every = snapshot_every
        NoiseScaleEMA(noise_beta)  # checks beta now, not at the first step
        self.noise_beta = noise_beta
        self._replay_noise()
        self._on_devices = not self.strategy.updates_on_host  # where the state lives
        self._devices_current = False  # the devices hold the host's parameters and state
        self._host_current = True  # the host's copy is that of the last step
        self._snapshot = None
        self._take_snapshot()

    # -- engines ------------------------------------------------------------------
    def _make_engine(self):
        return ENGINES[self.engine_name](self.spec, self.n_devices, self.memory_bytes,
                                         strategy=self.strategy)

    @property
    def engine(self):
        """The engine, (re)started on demand: after a crash the next step starts afresh."""
        if self._engine is None or self._engine.closed:
            self._engine = self._make_engine()
            self._devices_current = False
        return self._engine

    # -- the host's view of the state -----------------------------------------------
    def _consolidate(self, gather=False):
        """The devices' parameters and state, copied to the host if it is behind."""
        if self._host_current or self._engine is None or self._engine.closed:
            return
        kw = {"gather": gather} if self.engine_name == "mpi" else {}
        sd = self._engine.state_dict(slots=self.optimizer.slots, **kw)
        self._model.set_values(sd["values"])
        self._opt_state = sd["state"] if self.optimizer.slots else []
        # after a collective consolidation every MPI rank is as current as it will get
        # (state None where a rank does not hold it): the same on every rank, so that no
        # rank starts another collective call the others do not make
        self._host_current = gather or self._opt_state is not None

    @property
    def model(self):
        """The host's model, with the parameters of the last whole step."""
        self._consolidate()
        return self._model

    @property
    def opt_state(self):
        """The optimizer state of the last whole step ([slot][param] arrays), or None on an
        MPI rank that does not hold it (a sharded optimizer's ranks but 0, between
        snapshots; a host gather's ranks but 0)."""
        self._consolidate()
        return self._opt_state

    @opt_state.setter
    def opt_state(self, state):
        self._opt_state, self._devices_current = state, False

    def _take_snapshot(self):
        """Copies of the last whole step's parameters, state, t, step and history length."""
        if self._on_devices:
            self._consolidate(gather=True)
        self._snapshot = (self.step_count, [v.copy() for v in self._model.get_values()],
                          _copy_state(self._opt_state),
                          self.opt_t, len(self.history))

    def _restore_snapshot(self, error):
        """After a device died (or its state was lost): back to the snapshot; say the cost."""
        step, values, state, t, n_hist = self._snapshot
        lost = self.step_count - step
        self._model.set_values(values)
        self._opt_state = _copy_state(state)
        self.opt_t, self.step_count, self.history = t, step, self.history[:n_hist]
        self._replay_noise()
        self._host_current, self._devices_current = True, False
        error.steps_lost = lost
        error.args = (f"{error.args[0]}; the devices held the parameters and optimizer state, "
                      f"so the trainer went back to its snapshot of step {step}: {lost} "
                      f"step(s) lost (snapshot_every={self.snapshot_every})",)

    def _recover_if_engine_lost(self):
        """The engine closed (Ctrl-C, a crash between steps) while its devices held the
        state of the last steps: go back to the snapshot, and say what it cost."""
        if self._on_devices and not self._host_current and (self._engine is None or self._engine.closed):
            lost = self.step_count - self._snapshot[0]
            warnings.warn(f"the engine was closed while its devices held the state of the last "
                          f"{lost} step(s): going back to the snapshot of step {self._snapshot[0]}")
            self._restore_snapshot(RuntimeError("engine closed"))

    # -- training -------------------------------------------------------------------
    def step(self, x, y):
        """One data-parallel step on the batch ``(x, y)``; returns the batch's mean loss."""
        t0 = time.perf_counter()
        label = f"step {self.step_count}"
        self._recover_if_engine_lost()
        try:
            if self._on_devices:
                engine = self.engine
                if not self._devices_current:
                    self._consolidate(gather=True)
                    engine.load_state_dict({"values": self._model.get_values(),
                                            "state": self._opt_state if self.optimizer.slots else None})
                    self._devices_current = True
                result = engine.step(None, x, y, Update(self.optimizer, None, self.opt_t, label))
                self._host_current = False
            else:
                update = Update(self.optimizer, self._opt_state, self.opt_t, label)
                result = self.engine.step(self._model.get_values(), x, y, update)
                self._model.set_values(result.new_values)
                self._opt_state = result.new_state  # None on MPI ranks that do not hold it
        except (WorkerDied, DeviceStateLost) as e:
            if self._on_devices:
                self._restore_snapshot(e)
            raise
        self.opt_t += 1
        seconds = time.perf_counter() - t0
        self.history.append({"step": self.step_count, "loss": result.loss, "seconds": seconds,
                             "images_per_s": len(x) / seconds, "timings": result.timings,
                             **self._noise_record(result)})
        self.step_count += 1
        if self._on_devices and self.step_count % self.snapshot_every == 0:
            self._take_snapshot()
        return result.loss

    # -- the gradient noise scale (mgpu_lab.statistics) ---------------------------------
    def _noise_record(self, result):
        """The history's noise-scale keys for one step (module docstring)."""
        norms = None
        if result.split_sq_norms is not None and result.batch_sq_norm is not None:
            norms = {"split_sizes": [int(n) for n in result.split_sizes],
                     "split": list(result.split_sq_norms), "batch": result.batch_sq_norm}
        est = self._feed_noise(norms)
        if est is None:
            return {"sq_norms": norms, "b_simple": None, "trace_sigma": None, "grad_sq": None}
        return {"sq_norms": norms, **est._asdict()}  # b_simple, trace_sigma, grad_sq

    def _feed_noise(self, norms):
        """One step's squared norms into the moving averages; the smoothed estimate, or None
        (one device; or norms missing or not finite: that step is left out)."""
        if self._noise is None:
            return None
        if norms and all(math.isfinite(v) for v in norms["split"] + [norms["batch"]]):
            self._noise.update(norms["split_sizes"], norms["split"], norms["batch"])
        return self._noise.value

    def _replay_noise(self):
        """The moving averages rebuilt from ``history`` (after a load or a restore), so a
        resumed run continues them as an uninterrupted one would."""
        self._noise = NoiseScaleEMA(self.noise_beta) if self.n_devices > 1 else None
        for h in self.history:
            self._feed_noise(h.get("sq_norms"))

    @property
    def noise_scale(self):
        """The current smoothed :class:`~mgpu_lab.statistics.NoiseScale`, or None (one
        device, or no step yet)."""
        return None if self._noise is None else self._noise.value

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
                self._recover_if_engine_lost()  # before the batch: it depends on the step
                idx = batch_indices(self.step_count, len(x), batch_size, data_seed)
                loss = self.step(x[idx], y[idx])
                bar.update(1)
                b_simple = self.history[-1].get("b_simple")
                bar.set_postfix(loss=f"{loss:.4f}", **({} if b_simple is None else
                                                       {"B_simple": f"{b_simple:.0f}"}))
        except KeyboardInterrupt:
            self.close()  # workers may be mid-step: stop them all; params are from the last full step
            raise
        finally:
            bar.close()
        return self.history

    def evaluate(self, x, y, batch_size=512):
        """(mean loss, accuracy) of the current parameters, computed on the host."""
        model = self.model
        x, y = model.check_batch(x, y)
        f = model.loss_and_accuracy_function()
        totals = np.zeros(2)
        for a in range(0, len(x), batch_size):
            loss, acc = f(x[a:a + batch_size], y[a:a + batch_size])
            totals += np.array([loss, acc]) * len(x[a:a + batch_size])
        return tuple(totals / len(x))

    # -- checkpoints (mgpu_lab.checkpoint) ------------------------------------------------
    def save(self, path):
        """Write params, optimizer state, step and history atomically; returns the path."""
        self._consolidate(gather=True)  # on MPI every rank must call save; rank 0 writes
        if self._opt_state is None or getattr(self._engine, "rank", 0) != 0:
            return None  # an MPI rank other than 0
        history = [{**h, "timings": h["timings"].as_dict()} for h in self.history]
        return save_checkpoint(path, self.spec, self._model.get_values(),
                               state_dict(self.optimizer, self._opt_state, self.opt_t),
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
        names, shapes = [p.name for p in self._model.params], self._model.param_shapes
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
        self._opt_state = [list(slot) for slot in ck.optimizer_state["state"]]
        self.opt_t = int(ck.optimizer_state["t"])
        self._model.set_values(ck.values)
        self.step_count, self.history = ck.step, history
        self._replay_noise()
        self._host_current, self._devices_current = True, False  # loaded at the next step
        self._take_snapshot()
        return self

    def close(self):
        """Consolidate what the devices hold (so ``model`` and ``opt_state`` stay readable),
        then stop the engine."""
        if self._engine is not None and not self._engine.closed:
            self._consolidate(gather=True)
            self._engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

