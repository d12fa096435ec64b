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
    ring   every rank scales its gradient by n_i / B; a ring all-reduce sums them: the
           2(N-1) steps of :func:`mgpu_lab.collectives.ring_schedule`, each one
           ``Sendrecv`` of a chunk to rank+1 and from rank-1 (not MPI's ``Allreduce``,
           which picks an algorithm of its own). Every rank ends with the full-batch
           gradient and applies the same update itself. Each rank sends and receives
           2 (N-1)/N * P numbers, whatever N is.

Only float32/float64 numpy buffers travel (capital-letter mpi4py calls, no pickles),
except the text of an error when a step fails. ``mpiexec`` decides where the ranks run
(one machine, or many with a host file): nothing in this module changes between them.

Launch with ``mpiexec -n N python -m mgpu_lab train --engine mpi --strategy ring``, or
build the command with :func:`mpiexec_command`. mpi4py is imported (and MPI started) only
when an engine needs it, so importing this module is free. The MPI benchmarks live in
:mod:`mgpu_lab.measure.mpi_bench`.
"""
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .._theano import floatX
from ..collectives import device_steps, ring_chunks
from ..errors import DeviceError, NonFiniteGradient
from ..gradients import stack_gradients
from ..validate import check_n_devices
from .base import Engine, flatten, unflatten
from .pinning import PIN_ENV

__all__ = ["ROOT", "MPIEngine", "mpiexec_path", "mpiexec_command", "world", "mpi",
           "install_abort_hook", "gather_rows", "ring_allreduce", "allreduce_weighted",
           "host_exchange"]

ROOT = 0  # the host rank of the 'host' strategy
assert floatX == "float32"  # every buffer below travels as MPI.FLOAT
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
    for k, v in PIN_ENV.items():  # a rank is a device: one BLAS thread, freed memory kept
        cmd += ["-genv", k, v]
    return cmd + [sys.executable] + [str(a) for a in args]


def world():
    """``MPI.COMM_WORLD`` (starts MPI on first use)."""
    return mpi().COMM_WORLD


def mpi():
    """The ``mpi4py.MPI`` module (importing it starts MPI)."""
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
        sys.stderr.write(f"mgpu_lab.engines.mpi: rank {comm.rank} of {comm.size} raised "
                         f"{kind.__name__}: {value}; aborting all ranks\n")
        sys.stderr.flush()
        previous(kind, value, tb)  # the rank's traceback on its stderr
        sys.stderr.flush()
        time.sleep(0.5)  # let mpiexec forward the output before the job is torn down
        comm.Abort(1)

    hook._mgpu_abort = True
    sys.excepthook = hook


# -- the two exchanges (shared by the engine and the benchmark) ----------------------
def gather_rows(comm, flat, rows):
    """Gatherv: rank i's ``flat`` (P,) lands in row i of the root's ``rows`` (N, P)."""
    MPI, P = mpi(), flat.size
    recv = None
    if comm.rank == ROOT:
        recv = [rows, [P] * comm.size, [i * P for i in range(comm.size)], MPI.FLOAT]
    comm.Gatherv([flat, MPI.FLOAT], recv, root=ROOT)


def ring_allreduce(comm, buf, scratch=None):
    """Sum ``buf`` (float32, flat) over the ranks, in place, by the ring: at each step of
    :func:`~mgpu_lab.collectives.device_steps` one chunk goes to rank+1 while one comes
    from rank-1 (``Sendrecv``: both at once, so no rank waits on a blocked send)."""
    MPI, N, r = mpi(), comm.size, comm.rank
    chunks = ring_chunks(buf.size, N)
    scratch = np.empty(max(b - a for a, b in chunks), dtype=floatX) if scratch is None else scratch
    right, left = (r + 1) % N, (r - 1) % N
    for op, send, recv in device_steps(r, N):
        (a, b), (c, d) = chunks[send], chunks[recv]
        got = scratch[:d - c]
        comm.Sendrecv([buf[a:b], MPI.FLOAT], dest=right, sendtag=0,
                      recvbuf=[got, MPI.FLOAT], source=left, recvtag=0)
        if op == "add":
            buf[c:d] += got  # reduce-scatter: left's partial sum onto mine
        else:
            buf[c:d] = got  # all-gather: left's finished chunk
    return buf


def allreduce_weighted(comm, flat, weight, out):
    """``out`` = sum over ranks of ``weight_i * flat_i``, by :func:`ring_allreduce`."""
    np.multiply(flat, np.dtype(floatX).type(weight), out=flat)  # (n_i / B) g_i, scaled before sending
    out[:] = flat
    ring_allreduce(comm, out)


def host_exchange(comm, flat, rows, sizes, new_params):
    """The chapter's exchange on a flat gradient: gather, stack on the root, broadcast.

    Used by the benchmark (the engine does the same with an update in the middle).
    Returns this rank's seconds in each phase: (gather, stack, broadcast).
    """
    t0 = time.perf_counter()
    gather_rows(comm, flat, rows)
    t1 = time.perf_counter()
    if comm.rank == ROOT:
        new_params[:] = stack_gradients([[r] for r in rows], sizes)[0]
    t2 = time.perf_counter()
    comm.Bcast([new_params, mpi().FLOAT], root=ROOT)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


# -- the engine -------------------------------------------------------------------------
class MPIEngine(Engine):  # close() only marks it closed: MPI itself ends with the process
    """N devices = the N ranks of ``comm`` (``MPI.COMM_WORLD`` by default).

    ``step`` runs on every rank with the same batch; each rank computes its own split.
    'ring': every rank ends with the all-reduced gradient and applies the same update.
    'host': rank 0 gathers, stacks, updates and broadcasts the parameters (or, with no
    update, the stacked gradient); the optimizer state lives on rank 0 alone, as on the
    chapter's host: save from rank 0.
    """

    strategies = ("host", "ring")

    def __init__(self, model, n_devices, memory_bytes=None, strategy="host", comm=None):
        self.comm = comm or world()
        self.rank, self.size = self.comm.rank, self.comm.size
        if check_n_devices(n_devices) != self.size:
            raise ValueError(
                f"MPIEngine: n_devices={n_devices}, but this MPI job has {self.size} "
                f"rank(s); each rank is one device: pass n_devices={self.size}, or launch "
                f"with mpiexec -n {n_devices}")
        super().__init__(model, n_devices, memory_bytes, strategy)
        self._fn = self.model.loss_and_gradients_function()  # every rank compiles its own
        self.shapes, P = self.model.param_shapes, self.model.n_params
        self._flat = np.empty(P, dtype=floatX)  # this rank's gradient, flat
        self._out = np.empty(P, dtype=floatX)  # the reduced gradient / new parameters
        self._rows = np.empty((self.size, P), floatX) if self.rank == ROOT else None
        self._stats = np.empty((self.size, 2), dtype=np.float64)  # (loss, compute s) per rank
        self._synced = False
        if self.size > 1:
            install_abort_hook(self.comm)

    def _compute(self, values, x, y, bounds, update, t):
        """This rank's split into ``_flat``; every rank learns every loss."""
        t0 = time.perf_counter()
        self.model.set_values(self._sync(values))
        a, b = bounds[self.rank]
        t1 = time.perf_counter()
        loss, *grads = self._fn(x[a:b], y[a:b])
        t2 = time.perf_counter()
        flatten(grads, out=self._flat)
        self.comm.Allgather(np.array([float(loss), t2 - t1]), self._stats)
        t.set_params, t.compute = t1 - t0, t2 - t1
        t.exchange += time.perf_counter() - t2
        return list(self._stats[:, 0]), list(self._stats[:, 1]), self._flat

    def _sync(self, values):
        """On first use, rank 0's parameters win: every rank starts from the same point."""
        if self._synced:
            return values
        flat = flatten(values)
        self.comm.Bcast([flat, mpi().FLOAT], root=ROOT)
        self._synced = True
        return [v.copy() for v in unflatten(flat, self.shapes)]

    def _exchange(self, values, flat, sizes, loss, update, t):
        if self.strategy == "ring":
            return self._ring(values, flat, sizes, loss, update, t)
        return self._host(values, flat, sizes, loss, update, t)

    def _ring(self, values, flat, sizes, loss, update, t):
        """Ring all-reduce of (n_i / B) g_i: every rank holds the stacked gradient, updates."""
        t0 = time.perf_counter()
        weights = (np.asarray(sizes, dtype=np.float64) / sum(sizes)).astype(floatX)
        allreduce_weighted(self.comm, flat, weights[self.rank], self._out)
        grads = [g.copy() for g in unflatten(self._out, self.shapes)]
        t.exchange += time.perf_counter() - t0
        return grads, self._update(update, values, grads, loss, t)

    def _host(self, values, flat, sizes, loss, update, t):
        """Gatherv to rank 0, which stacks and updates; Bcast of the outcome to all."""
        t0 = time.perf_counter()
        gather_rows(self.comm, flat, self._rows)
        t1 = time.perf_counter()
        grads = None
        if self.rank == ROOT:
            grads = stack_gradients([unflatten(r, self.shapes) for r in self._rows], sizes)
        t.stack = time.perf_counter() - t1
        verdict, error = self._update_on_root(update, values, grads, loss, t)
        t2 = time.perf_counter()
        self._share_verdict(verdict, error)
        self.comm.Bcast([self._out, mpi().FLOAT], root=ROOT)  # new parameters (or gradient)
        received = [v.copy() for v in unflatten(self._out, self.shapes)]
        t.exchange += (t1 - t0) + (time.perf_counter() - t2)
        if update is None:
            return received, None
        return grads, received

    def _update_on_root(self, update, values, grads, loss, t):
        """(verdict, exception) of the update on rank 0; its outcome goes into ``_out``."""
        if self.rank != ROOT:
            return _OK, None
        try:
            flatten(grads if update is None else self._update(update, values, grads, loss, t),
                    out=self._out)
            return _OK, None
        except NonFiniteGradient as e:
            return _NON_FINITE, e
        except Exception as e:  # noqa: BLE001 - passed on to every rank, then re-raised
            return _FAILED, e

    def _share_verdict(self, verdict, error):
        """Broadcast rank 0's verdict; on failure every rank raises (rank 0 its own error)."""
        flag = np.array([verdict], dtype=np.int32)
        self.comm.Bcast([flag, mpi().INT], root=ROOT)
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
