"""The same data-parallel step on MPI ranks: the engine for one machine or many.

Every rank runs the same program (SPMD) and is one device. Every rank holds the same
full batch, takes its own split (rank r = device r, :func:`mgpu_lab.split.split_batch`),
computes the gradient of that split, and then the ranks combine the N gradients in one
of two ways (``strategy``):

    host   as in the chapter: rank 0 is the host. It gathers the N gradients (Gatherv
           into an (N, P) buffer), stacks them weighted by split size
           (:func:`mgpu_lab.gradients.stack_gradients`), applies the update, and
           broadcasts the new parameters (Bcast). Rank 0 receives N-1 gradients and
           sends the parameters on: its links carry everything.
    ring   every rank scales its gradient by n_i / N and ``Allreduce`` sums them: every
           rank ends with the full-batch gradient and applies the same update itself.
           Each rank sends and receives about 2 (N-1)/N * P bytes, whatever N is.

Only float32/float64 numpy buffers travel (capital-letter mpi4py calls, no pickles),
except the text of an error when a step fails. ``mpiexec`` decides where the ranks run
(one machine, or many with a host file): nothing in this module changes between them.

Launch with ``mpiexec -n N python -m mgpu_lab train --engine mpi --strategy ring``, or
build the command with :func:`mpiexec_command`. mpi4py is imported (and MPI started) only
when an engine or a benchmark needs it, so importing this module is free.
"""
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .devices import PIN_ENV
from .engine import Engine, GradientResult, check_fits, flatten, unflatten
from .errors import DeviceError, NonFiniteGradient, PoolClosed
from .gradients import stack_gradients
from .machine import save_result
from .models import build
from .split import split_batch, split_sizes
from .validate import check_n_devices

__all__ = ["STRATEGIES", "MPIEngine", "mpiexec_path", "mpiexec_command", "world",
           "install_abort_hook", "bench_comm", "ping_pong", "sized_mlp", "bench_steps",
           "run_bench", "save_bench", "format_bench"]

STRATEGIES = ("host", "ring")
ROOT = 0  # the host rank of the 'host' strategy
# A rank is one device on one core: the same environment as a local device's worker
# (one BLAS thread, freed memory kept in the process).
RANK_ENV = PIN_ENV
_OK, _NON_FINITE, _FAILED = 0, 1, 2  # the host's verdict on an update, broadcast to all


# -- launching ---------------------------------------------------------------------------
def mpiexec_path():
    """The ``mpiexec`` that belongs to this Python (the mpich wheel puts it beside it)."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if found:
        return found
    raise FileNotFoundError(f"no mpiexec beside {sys.executable} nor on PATH; install one "
                            f"into this environment with: pip install mpi4py mpich")


def mpiexec_command(n, args, hosts=None, bind=True):
    """The argv that runs ``python <args>`` on ``n`` ranks: ``subprocess.run(cmd)``.

    Everything a launch needs lives here: this Python and its mpiexec (MPICH's Hydra),
    one BLAS thread per rank (``-genv`` carries it to other machines too), and each rank
    bound to its own core (wrapping round when ranks outnumber cores). ``hosts``: a host
    file (one machine per line, ``name:slots``) to spread the ranks over machines. As
    root in a container Hydra needs no extra flag (Open MPI's mpirun would).
    """
    n = check_n_devices(n)
    cmd = [mpiexec_path(), "-n", str(n)]
    if hosts:
        cmd += ["-f", str(hosts)]
    if bind:
        cmd += ["-bind-to", "core"]
    for k, v in RANK_ENV.items():
        cmd += ["-genv", k, v]
    return cmd + [sys.executable] + [str(a) for a in args]


def world():
    """``MPI.COMM_WORLD`` (starts MPI on first use)."""
    return _mpi().COMM_WORLD


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - requirements.txt installs it
        raise ImportError("the MPI engine needs mpi4py and an MPI library: "
                          "pip install mpi4py mpich") from e
    return MPI


def install_abort_hook(comm=None):
    """An uncaught exception on any rank prints its traceback and aborts the whole job.

    Without it the other ranks would wait forever in their next collective call for a
    rank that has died. Installed by every :class:`MPIEngine` on more than one rank.
    """
    comm = comm or world()
    if getattr(sys.excepthook, "_mgpu_abort", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        # The one-line summary first: Abort tears the job down while mpiexec may still be
        # forwarding this rank's stderr, and a long traceback can arrive cut short.
        sys.stderr.write(f"mgpu_lab.mpi: rank {comm.rank} of {comm.size} raised "
                         f"{kind.__name__}: {value}; aborting all ranks\n")
        sys.stderr.flush()
        previous(kind, value, tb)  # the rank's traceback on its stderr
        sys.stderr.flush()
        time.sleep(0.5)  # let mpiexec forward the output before the job is torn down
        comm.Abort(1)

    hook._mgpu_abort = True
    sys.excepthook = hook


# -- the two exchanges (shared by the engine and the benchmark) ----------------------
def _gather_rows(comm, flat, rows):
    """Gatherv: rank i's ``flat`` (P,) lands in row i of the root's ``rows`` (N, P)."""
    MPI, P = _mpi(), flat.size
    recv = None
    if comm.rank == ROOT:
        recv = [rows, [P] * comm.size, [i * P for i in range(comm.size)], MPI.FLOAT]
    comm.Gatherv([flat, MPI.FLOAT], recv, root=ROOT)


def _allreduce_weighted(comm, flat, weight, out):
    """``out`` = sum over ranks of ``weight_i * flat_i`` (Allreduce of float32, in place)."""
    MPI = _mpi()
    np.multiply(flat, np.float32(weight), out=flat)  # (n_i / N) g_i, scaled before sending
    comm.Allreduce([flat, MPI.FLOAT], [out, MPI.FLOAT], op=MPI.SUM)


def _host_exchange(comm, flat, rows, sizes, new_params):
    """The chapter's exchange on a flat gradient: gather, stack on the root, broadcast.

    Used by :func:`bench_comm` (the engine does the same with an update in the middle).
    Returns this rank's seconds in each phase: (gather, stack, broadcast).
    """
    t0 = time.perf_counter()
    _gather_rows(comm, flat, rows)
    t1 = time.perf_counter()
    if comm.rank == ROOT:
        new_params[:] = stack_gradients([[r] for r in rows], sizes)[0]
    t2 = time.perf_counter()
    comm.Bcast([new_params, _mpi().FLOAT], root=ROOT)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


# -- the engine -------------------------------------------------------------------------
class MPIEngine(Engine):  # close() only marks it closed: MPI itself ends with the process
    """N devices = the N ranks of ``comm`` (``MPI.COMM_WORLD`` by default).

    Same interface as :class:`~mgpu_lab.engine.SerialEngine` and
    :class:`~mgpu_lab.devices.DevicePool`: ``gradients(values, x, y)`` returns the stacked
    gradient of the batch (on every rank), ``close()``, ``closed``. :meth:`step` also
    places the update where the strategy says (the trainer uses it). With 'host' the
    optimizer state lives on rank 0 alone, as on the chapter's host: save from rank 0.
    """

    def __init__(self, model_spec, n_devices, memory_bytes=None, strategy="host", comm=None):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown MPI strategy {strategy!r}; choose one of "
                             f"{', '.join(STRATEGIES)}")
        self.comm = comm or world()
        self.rank, self.size = self.comm.rank, self.comm.size
        self.n_devices = check_n_devices(n_devices)
        if self.n_devices != self.size:
            raise ValueError(
                f"MPIEngine: n_devices={self.n_devices}, but this MPI job has {self.size} "
                f"rank(s); each rank is one device: pass n_devices={self.size}, or launch "
                f"with mpiexec -n {self.n_devices}")
        self.strategy, self.memory_bytes = strategy, memory_bytes
        self.model = build(model_spec)
        self._fn = self.model.loss_and_gradients_function()  # every rank compiles its own
        self.shapes, P = self.model.param_shapes, self.model.n_params
        self._flat = np.empty(P, dtype=np.float32)  # this rank's gradient, flat
        self._out = np.empty(P, dtype=np.float32)  # the reduced gradient / new parameters
        self._rows = np.empty((self.size, P), np.float32) if self.rank == ROOT else None
        self._stats = np.empty((self.size, 2), dtype=np.float64)  # (loss, compute s) per rank
        self._synced, self.closed = False, False
        if self.size > 1:
            install_abort_hook(self.comm)

    # -- the part every rank does alone, then the exchange --------------------------------
    def _local(self, values, x, y):
        """Split, set params, compute this rank's gradient into ``_flat``; share losses."""
        if self.closed:
            raise PoolClosed("this MPIEngine is closed; create a new one")
        t0 = time.perf_counter()
        x, y = self.model.check_batch(x, y)
        sizes = split_sizes(len(x), self.n_devices)
        check_fits(self.model, sizes, self.memory_bytes)  # same verdict on every rank
        values = self._sync(values)
        self.model.set_values(values)
        xs, ys = split_batch(x, y, self.n_devices)[self.rank]
        t1 = time.perf_counter()
        loss, *grads = self._fn(xs, ys)
        t2 = time.perf_counter()
        flatten(grads, out=self._flat)
        # Every rank learns every loss: the batch loss is computed as the serial engine does.
        self.comm.Allgather(np.array([float(loss), t2 - t1]), self._stats)
        losses, secs = self._stats[:, 0], list(self._stats[:, 1])
        result = GradientResult(None, float(np.dot(losses, sizes) / len(x)), sizes, secs,
                                {"split": t1 - t0, "compute": t2 - t1,
                                 "losses": time.perf_counter() - t2})
        return values, result

    def _sync(self, values):
        """On first use, rank 0's parameters win: every rank starts from the same point."""
        if self._synced:
            return values
        flat = flatten(values)
        self.comm.Bcast([flat, _mpi().FLOAT], root=ROOT)
        self._synced = True
        return [v.copy() for v in unflatten(flat, self.shapes)]

    def _reduce(self, result):
        """ring: Allreduce the weighted gradients; every rank holds the stacked gradient."""
        t = time.perf_counter()
        weight = result.split_sizes[self.rank] / sum(result.split_sizes)
        _allreduce_weighted(self.comm, self._flat, weight, self._out)
        result.grads = [g.copy() for g in unflatten(self._out, self.shapes)]
        result.breakdown["allreduce"] = time.perf_counter() - t

    def _gather(self, result):
        """host: Gatherv to rank 0, which stacks; ``result.grads`` is None elsewhere."""
        t = time.perf_counter()
        _gather_rows(self.comm, self._flat, self._rows)
        t1 = time.perf_counter()
        if self.rank == ROOT:
            rows = [unflatten(r, self.shapes) for r in self._rows]
            result.grads = stack_gradients(rows, result.split_sizes)  # as the local engine
        result.breakdown.update(gather=t1 - t, stack=time.perf_counter() - t1)

    def gradients(self, values, x, y):
        """The stacked gradient of the batch, on every rank (host: stacked on rank 0,
        then broadcast; ring: all-reduced)."""
        values, result = self._local(values, x, y)
        if self.strategy == "ring":
            self._reduce(result)
            return result
        self._gather(result)
        t = time.perf_counter()
        if self.rank == ROOT:
            flatten(result.grads, out=self._out)
        self.comm.Bcast([self._out, _mpi().FLOAT], root=ROOT)
        result.grads = [g.copy() for g in unflatten(self._out, self.shapes)]
        result.breakdown["broadcast"] = time.perf_counter() - t
        return result

    def step(self, values, x, y, update):
        """One step with the update placed by the strategy: ``(result, new_values)``.

        ``update(values, result) -> new values`` (the trainer's checked optimizer step).
        ring: every rank applies it to the same all-reduced gradient, so all agree.
        host: rank 0 applies it and broadcasts the outcome: the new parameters, or the
        error, which every rank then raises (NonFiniteGradient stays NonFiniteGradient).
        """
        values, result = self._local(values, x, y)
        if self.strategy == "ring":
            self._reduce(result)
            t = time.perf_counter()
            new = update(values, result)
            result.breakdown["update"] = time.perf_counter() - t
            return result, new
        self._gather(result)
        t = time.perf_counter()
        verdict, error = self._update_on_root(update, values, result)
        t1 = time.perf_counter()
        self._share_verdict(verdict, error)
        self.comm.Bcast([self._out, _mpi().FLOAT], root=ROOT)  # the new parameters
        result.breakdown.update(update=t1 - t, broadcast=time.perf_counter() - t1)
        return result, [v.copy() for v in unflatten(self._out, self.shapes)]

    def _update_on_root(self, update, values, result):
        """(verdict, exception) of the update on rank 0; new parameters into ``_out``."""
        if self.rank != ROOT:
            return _OK, None
        try:
            flatten(update(values, result), out=self._out)
            return _OK, None
        except NonFiniteGradient as e:
            return _NON_FINITE, e
        except Exception as e:  # noqa: BLE001 - passed on to every rank, then re-raised
            return _FAILED, e

    def _share_verdict(self, verdict, error):
        """Broadcast rank 0's verdict; on failure every rank raises (rank 0 its own error)."""
        flag = np.array([verdict], dtype=np.int32)
        self.comm.Bcast([flag, _mpi().INT], root=ROOT)
        if flag[0] == _OK:
            return
        text = None
        if self.rank == ROOT:
            text = str(error) if flag[0] == _NON_FINITE else "".join(
                traceback.format_exception(type(error), error, error.__traceback__))
        text = self.comm.bcast(text, root=ROOT)  # a short string, only when a step fails
        if self.rank == ROOT:
            raise error
        raise NonFiniteGradient(text) if flag[0] == _NON_FINITE else DeviceError(ROOT, text)

    def __repr__(self):
        return (f"<MPIEngine {self.model.spec.describe()} rank {self.rank} of {self.size}, "
                f"strategy={self.strategy}>")


# -- measuring the two exchanges ---------------------------------------------------------
def _max_over_ranks(comm, seconds):
    """A collective is done when its slowest rank is: the max of every rank's times."""
    mine = np.ascontiguousarray(seconds, dtype=np.float64)
    out = np.empty_like(mine)
    comm.Allreduce(mine, out, op=_mpi().MAX)
    return out


def _summary(times):
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times)),
            "max_s": float(np.max(times)), "repeats": len(times)}


def bench_comm(sizes_bytes=(1e6, 1e7, 1e8), strategies=STRATEGIES, repeats=7, warmup=2,
               comm=None):
    """Time the communication part of a step alone, for gradients of ``sizes_bytes``.

    host: Gatherv to rank 0 + weighted stack there + Bcast of P bytes back;
    ring: scale by n_i / N + Allreduce. Every repeat starts after a barrier; its time is
    the slowest rank's. Run on every rank (``mpiexec -n N``); returns the same list of
    rows on every rank: n_ranks, strategy, bytes, median_s, min_s, max_s, repeats, and
    for host the median of each phase on rank 0 (gather_s, stack_s, broadcast_s).
    """
    comm = comm or world()
    n, rows = comm.size, []
    sizes = split_sizes(64 * n - 1, n)  # uneven on purpose: the weights are not all equal
    for nbytes in sizes_bytes:
        P = max(1, int(nbytes) // 4)
        grad = np.random.RandomState(comm.rank).standard_normal(P).astype(np.float32)
        flat, out = np.empty_like(grad), np.empty_like(grad)
        gathered = np.empty((n, P), np.float32) if comm.rank == ROOT else None
        for strategy in strategies:
            times = []  # per repeat: total, then the host's phases (gather, stack, broadcast)
            for _ in range(warmup + repeats):
                flat[:] = grad  # the ring scales in place: start each repeat afresh
                comm.Barrier()
                t = time.perf_counter()
                if strategy == "host":
                    phases = _host_exchange(comm, flat, gathered, sizes, out)
                else:
                    _allreduce_weighted(comm, flat, sizes[comm.rank] / sum(sizes), out)
                    phases = (np.nan,) * 3
                times.append((time.perf_counter() - t, *phases))
            times = np.array(times)[warmup:]
            row = {"n_ranks": n, "strategy": strategy, "bytes": 4 * P,
                   **_summary(_max_over_ranks(comm, times[:, 0]))}
            if strategy == "host":  # the phases as the host (rank 0) saw them
                phases = np.ascontiguousarray(times[:, 1:])
                comm.Bcast(phases, root=ROOT)
                row.update({f"{k}_s": float(np.median(phases[:, i]))
                            for i, k in enumerate(("gather", "stack", "broadcast"))})
            rows.append(row)
        del grad, flat, out, gathered
    return rows


def ping_pong(comm=None, small=8, large=1 << 24, repeats=20):
    """Latency and bandwidth of one link (rank 0 <-> rank 1), the cost model's inputs.

    latency = half the median round trip of ``small`` bytes; bandwidth = ``large`` bytes
    over (half the median round trip of ``large`` bytes - latency). Needs >= 2 ranks;
    the others sleep meanwhile. Returns the same dict on every rank.
    """
    comm = comm or world()
    if comm.size < 2:
        raise ValueError("ping_pong needs at least 2 ranks (mpiexec -n 2 or more)")
    result, idle = np.zeros(2), comm.Ibarrier() if comm.rank >= 2 else None
    while idle is not None and not idle.Test():
        time.sleep(1e-3)  # ranks 2.. stay off the cores (a spinning wait would steal them)
    if comm.rank < 2:
        other = 1 - comm.rank
        for i, nbytes in enumerate((small, large)):
            buf = np.zeros(max(1, nbytes // 4), np.float32)
            rtts = []
            for _ in range(repeats + 2):
                t = time.perf_counter()
                if comm.rank == 0:
                    comm.Send(buf, dest=other)
                    comm.Recv(buf, source=other)
                else:
                    comm.Recv(buf, source=other)
                    comm.Send(buf, dest=other)
                rtts.append(time.perf_counter() - t)
            result[i] = np.median(rtts[2:]) / 2
        if comm.size > 2:
            comm.Ibarrier().Wait()  # releases the idle ranks
    comm.Bcast(result, root=0)
    latency = float(result[0])
    return {"latency_s": latency, "bandwidth_Bps": large / max(result[1] - latency, 1e-12),
            "small_bytes": small, "large_bytes": large}


def sized_mlp(nbytes, n_in=64, seed=0):
    """An MLP (n_in -> h -> h -> 10) whose gradient is about ``nbytes`` bytes of float32."""
    from .models import mlp
    params = max(1, int(nbytes) // 4)
    # h^2 + (n_in + 12) h + 10 = params  (two hidden layers of width h, their biases, the head)
    b = n_in + 12
    h = max(1, int(round((-b + np.sqrt(b * b + 4 * (params - 10))) / 2)))
    return mlp(n_in=n_in, hidden=(h, h), seed=seed)


_COMM_PHASES = {"host": ("gather", "stack", "broadcast"), "ring": ("allreduce",)}


def bench_steps(sizes_bytes=(1e6, 1e7, 1e8), strategies=STRATEGIES, steps=5, warmup=2,
                batch_size=64, lr=1e-3, comm=None):
    """Time whole training steps (SGD) of an MLP sized to each gradient size.

    Each step is :meth:`MPIEngine.step` (what the trainer calls): split, compute,
    exchange, update. Per step the slowest rank's times count. Rows: n_ranks, strategy,
    bytes, step_s (median), comm_s (median of the exchange phases: host gather + stack +
    broadcast, ring allreduce), compute_s, batch_size.
    """
    from .optim import SGD
    comm = comm or world()
    rows = []
    for nbytes in sizes_bytes:
        model = sized_mlp(nbytes)  # one graph for every size: compiled once, then cached
        rng = np.random.RandomState(0)
        x = rng.standard_normal((batch_size, 64)).astype(np.float32)
        y = rng.randint(0, 10, size=batch_size).astype(np.int32)
        for strategy in strategies:
            engine, opt = MPIEngine(model, comm.size, strategy=strategy, comm=comm), SGD(lr)
            values, times = model.get_values(), []
            for _ in range(warmup + steps):
                t = time.perf_counter()
                result, values = engine.step(values, x, y, lambda v, r: opt.update(v, r.grads))
                b = result.breakdown
                times.append([time.perf_counter() - t, b["compute"],
                              sum(b[k] for k in _COMM_PHASES[strategy])])
            times = _max_over_ranks(comm, times)[warmup:]
            rows.append({"n_ranks": comm.size, "strategy": strategy, "bytes": 4 * model.n_params,
                         "batch_size": batch_size, "step_s": float(np.median(times[:, 0])),
                         "compute_s": float(np.median(times[:, 1])),
                         "comm_s": float(np.median(times[:, 2])), "steps": steps})
            engine.close()
    return rows


# -- the benchmark over 2..4 ranks: launch, predict, save ---------------------------------
def _rank_main(argv=None):
    """``mpiexec -n N python -m mgpu_lab.mpi bench ... --out FILE``: one N's measurements."""
    import argparse
    import json
    p = argparse.ArgumentParser(prog="python -m mgpu_lab.mpi",
                                description="rank side of the MPI benchmark (see run_bench)")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--sizes", default="1e6,1e7,1e8", help="gradient sizes in bytes")
    b.add_argument("--strategies", default="host,ring")
    b.add_argument("--repeats", type=int, default=7)
    b.add_argument("--steps", type=int, default=5, help="timed training steps (0: none)")
    b.add_argument("--out", required=True, help="rank 0 writes the JSON here")
    args = p.parse_args(argv)
    comm = world()
    install_abort_hook(comm)
    sizes, strategies = [float(s) for s in args.sizes.split(",")], args.strategies.split(",")
    part = {"n_ranks": comm.size, "link": ping_pong(comm) if comm.size > 1 else None,
            "comm": bench_comm(sizes, strategies, args.repeats, comm=comm),
            "steps": bench_steps(sizes, strategies, args.steps, comm=comm) if args.steps else []}
    if comm.rank == ROOT:
        Path(args.out).write_text(json.dumps(part))
    return 0


def _predict(row, link):
    """The cost model's communication time for a measured row, from the measured link."""
    from .costmodel import comm_seconds
    if link is None:
        return None
    bw, latency = link["bandwidth_Bps"], link["latency_s"]
    return comm_seconds(row["strategy"], row["bytes"], row["n_ranks"], bw, bw, latency)


def run_bench(ranks=(2, 3, 4), sizes_bytes=(1e6, 1e7, 1e8), strategies=STRATEGIES,
              repeats=7, steps=5, timeout=900, progress=True):
    """Run :func:`bench_comm` and :func:`bench_steps` under ``mpiexec -n N`` for each N.

    Call it from a normal process (not under mpiexec). Returns a JSON-able dict: the
    machine, each N's measured link (ping-pong), and one row per N x strategy x size with
    the measured communication time (``comm_*``), the measured training step
    (``step_*``) and the cost model's prediction (``predicted_comm_s``).
    """
    import datetime
    import json
    import subprocess
    import tempfile

    from tqdm.auto import tqdm

    from .machine import machine_info
    rows, links, load = [], {}, os.getloadavg()  # other work on the machine skews timings
    args = ["--sizes", ",".join(f"{float(s):g}" for s in sizes_bytes),
            "--strategies", ",".join(strategies), "--repeats", str(repeats), "--steps", str(steps)]
    for n in tqdm(list(ranks), desc="mpiexec -n N", unit="N", disable=not progress):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.json"
            cmd = mpiexec_command(n, ["-m", "mgpu_lab.mpi", "bench", *args, "--out", out])
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                                   f"{proc.stderr[-4000:]}")
            part = json.loads(out.read_text())
        links[n] = part["link"]
        for i, r in enumerate(part["comm"]):
            s = part["steps"][i] if part["steps"] else {}  # same order: size, then strategy
            row = {"n_ranks": n, "strategy": r["strategy"], "bytes": r["bytes"],
                   "comm_s": r["median_s"], "comm_min_s": r["min_s"], "comm_max_s": r["max_s"],
                   "comm_repeats": r["repeats"],
                   **{f"comm_{k}": r[k] for k in ("gather_s", "stack_s", "broadcast_s") if k in r},
                   **{k if k.startswith("step_") else f"step_{k}": v for k, v in s.items()
                      if k not in ("n_ranks", "strategy")}}
            row["predicted_comm_s"] = _predict(row, part["link"])
            rows.append(row)
    return {"created": datetime.datetime.now().isoformat(timespec="seconds"),
            "kind": "measured (predicted_comm_s: costmodel.comm_seconds with the measured link)",
            "machine": machine_info(), "ranks": list(ranks),
            "load_average_1min": {"before": load[0], "after": os.getloadavg()[0]},
            "links": {str(k): v for k, v in links.items()}, "rows": rows}


def save_bench(result, out_dir="results", figure=True):
    """Write ``mpi-bench-<timestamp>.json``, ``.csv`` (one row per N x strategy x size, the
    machine on every row) and, with ``figure``, the ``.png`` of :func:`plots.mpi_comm`."""
    m = result["machine"]
    extra = {"created": result["created"], "cpu": m["cpu"], "machine_cores": m["cores"],
             "python": m["python"], "numpy": m["numpy"], "kind": result["kind"]}
    json_path, csv_path, base = save_result(result, out_dir, "mpi-bench", extra)
    paths = [json_path, csv_path]
    if figure:
        from .plots import mpi_comm
        fig = mpi_comm(result)
        paths.append(base.with_suffix(".png"))
        fig.savefig(paths[2], dpi=120, bbox_inches="tight")
    return paths


def format_bench(result):
    """The measured table, host beside ring, with the prediction (milliseconds)."""
    ms = lambda r, k: 1e3 * r[k] if r.get(k) is not None else np.nan  # noqa: E731
    lines = [f"measured on {result['machine']['cpu']}, {result['machine']['cores']} cores "
             f"(ranks > cores are oversubscribed); ms, medians; pred = cost model",
             f"{'N':>2} {'MB':>6} | {'host':>8} {'pred':>7} {'gather':>7} {'stack':>7} "
             f"{'bcast':>7} | {'ring':>8} {'pred':>7} | {'step host':>9} {'step ring':>9}"]
    by = {(r["n_ranks"], r["bytes"], r["strategy"]): r for r in result["rows"]}
    for n, nbytes in dict.fromkeys((r["n_ranks"], r["bytes"]) for r in result["rows"]):
        h, g = by.get((n, nbytes, "host"), {}), by.get((n, nbytes, "ring"), {})
        lines.append(
            f"{n:>2} {nbytes / 1e6:6.1f} | {ms(h, 'comm_s'):8.2f} {ms(h, 'predicted_comm_s'):7.2f} "
            f"{ms(h, 'comm_gather_s'):7.2f} {ms(h, 'comm_stack_s'):7.2f} "
            f"{ms(h, 'comm_broadcast_s'):7.2f} | {ms(g, 'comm_s'):8.2f} "
            f"{ms(g, 'predicted_comm_s'):7.2f} | {ms(h, 'step_s'):9.1f} {ms(g, 'step_s'):9.1f}")
    for n, link in result["links"].items():
        if link:
            lines.append(f"link (ping-pong, N={n}): latency {1e6 * link['latency_s']:.1f} us, "
                         f"bandwidth {link['bandwidth_Bps'] / 1e9:.2f} GB/s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_rank_main())
