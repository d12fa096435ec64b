"""The same data-parallel step on MPI ranks: the engine for one machine or many.

Every rank runs the same program (SPMD) and is one long-lived device
(:class:`~mgpu_lab.engines.device.Device`, the same class the pool's workers run). Every
rank holds the same full batch, takes its own split (rank r = device r), computes the
gradient of that split and then runs the strategy's part (:mod:`mgpu_lab.engines.strategies`) over an
:class:`MPILink`, this file's transport: ``Sendrecv``/``Send``/``Recv`` of float32
buffers for the point-to-point algorithms (ring, sharded, hierarchical), ``Gatherv`` to
rank 0 for the host gather. Rank 0 is the host: with ``strategy="host"`` it stacks the
gathered gradients, updates and broadcasts the new parameters (``Bcast``); with the
others every rank updates its own replica and state, and rank 0 gathers the sharded
optimizer's shards only when asked (``state_dict``, collective: a checkpoint, a
snapshot).

Only float32/float64 numpy buffers travel (capital-letter mpi4py calls, no pickles),
except the text of an error when a step fails. ``mpiexec`` decides where the ranks run
(one machine, or many with a host file): nothing in this module changes between them.
The nodes of a hierarchical all-reduce are, by default, the ranks that share a machine
(``Split_type(COMM_TYPE_SHARED)``).

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
from ..errors import DeviceError, NonFiniteGradient
from ..validate import check_n_devices
from .base import Engine, flatten, unflatten
from .pinning import PIN_ENV
from .device import Device
from .strategies import HostView

__all__ = ["ROOT", "MPIEngine", "MPILink", "mpiexec_path", "mpiexec_command", "world", "mpi",
           "install_abort_hook", "node_size"]

ROOT = 0  # the host rank
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


# -- the transport ------------------------------------------------------------------------
class MPILink:
    """One rank's end of the MPI transport, as strategies use it. Its scratch holds one
    message (sized once by the strategy); it counts the bytes it sends and receives."""

    waited = 0.0  # MPI's blocking calls do not say how long they waited: see MPIEngine

    def __init__(self, comm, scratch_floats, n_params, host_rows=False):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.scratch = np.empty(scratch_floats, floatX)
        self.scratch_bytes = self.scratch.nbytes
        # the host's receive buffer of the host gather: the host's memory, not a device's
        self.rows = np.empty((self.size, n_params), floatX) if host_rows and self.rank == ROOT else None
        self.reset()

    def reset(self):
        self.sent, self.received = 0, 0

    def sendrecv(self, send, dest, recv, source, add=False):
        F = mpi().FLOAT
        into = None if recv is None else (self.scratch[:recv.size] if add else recv)
        if send is not None and into is not None:  # both at once: no rank waits on a blocked send
            self.comm.Sendrecv([send, F], dest=dest, sendtag=0, recvbuf=[into, F], source=source,
                               recvtag=0)
        elif send is not None:
            self.comm.Send([send, F], dest=dest, tag=0)
        elif into is not None:
            self.comm.Recv([into, F], source=source, tag=0)
        if add and recv is not None:
            recv += into
        self.sent += 0 if send is None else send.nbytes
        self.received += 0 if recv is None else recv.nbytes

    def to_host(self, flat):
        """Gatherv: rank i's ``flat`` (P,) lands in row i of rank 0's ``rows`` (N, P)."""
        P, F = flat.size, mpi().FLOAT
        recv = [self.rows, [P] * self.size, [i * P for i in range(self.size)], F] \
            if self.rank == ROOT else None
        self.comm.Gatherv([flat, F], recv, root=ROOT)
        if self.rank != ROOT:  # rank 0 is the host: its own row does not cross
            self.sent += flat.nbytes
        return self.rows

    def gather_ranges(self, piece, ranges, out):
        """Gatherv: each rank's ``piece`` (the floats of its range [a, b) in ``ranges``)
        lands at [a, b) of ``out`` on rank 0."""
        recv = [out, [d - c for c, d in ranges], [c for c, _ in ranges], mpi().FLOAT] \
            if self.rank == ROOT else None
        self.comm.Gatherv([np.ascontiguousarray(piece), mpi().FLOAT], recv, root=ROOT)


_NODES = {}


def node_size(comm):
    """Ranks per machine (``COMM_TYPE_SHARED``): the nodes of a hierarchical all-reduce.
    Refuses machines with different numbers of ranks, or ranks not grouped by machine."""
    if id(comm) not in _NODES:
        local = comm.Split_type(mpi().COMM_TYPE_SHARED)
        G, first = local.size, local.bcast(comm.rank, root=0)  # the node's first world rank
        local.Free()
        ok = comm.allreduce(int(first == comm.rank - comm.rank % G and comm.size % G == 0),
                            op=mpi().MIN)
        sizes = comm.allgather(G)
        if not ok or len(set(sizes)) > 1:
            raise ValueError(f"the machines of this MPI job hold {sorted(set(sizes))} ranks each "
                             f"(or not in rank order): give devices_per_node=G explicitly")
        _NODES[id(comm)] = G
    return _NODES[id(comm)]


# -- the engine -------------------------------------------------------------------------
class MPIEngine(Engine):  # close() only marks it closed: MPI itself ends with the process
    """N devices = the N ranks of ``comm`` (``MPI.COMM_WORLD`` by default).

    ``step`` runs on every rank with the same batch; each rank is one long-lived
    :class:`~mgpu_lab.engines.device.Device` and computes its own split. With 'host' rank 0
    is also the host: it holds the optimizer state, stacks, updates and broadcasts the new
    parameters into every replica. With the others each rank keeps its replica and its
    part of the state; ``state_dict()`` consolidates them (rank 0 gathers the sharded
    optimizer's shards; every rank holds the parameters). Every rank's result is right
    or absent (None), never partial.
    """

    links = True

    def __init__(self, model, n_devices, memory_bytes=None, strategy="host",
                 devices_per_node=None, comm=None):
        self.comm = comm or world()
        self.rank, self.size = self.comm.rank, self.comm.size
        if check_n_devices(n_devices) != self.size:
            raise ValueError(
                f"MPIEngine: n_devices={n_devices}, but this MPI job has {self.size} "
                f"rank(s); each rank is one device: pass n_devices={self.size}, or launch "
                f"with mpiexec -n {n_devices}")
        super().__init__(model, n_devices, memory_bytes, strategy, devices_per_node)
        self.shapes, P = self.model.param_shapes, self.model.n_params
        self.link = MPILink(self.comm, self.strategy.message_floats(self.size, P), P,
                            host_rows=self.strategy.updates_on_host)
        self.device = Device(self.rank, self.size, self.model, self.strategy, self.link)
        self._stats = np.empty((self.size, 3), dtype=np.float64)  # loss, compute s, |g_i|^2
        self._synced = False
        if self.size > 1:
            install_abort_hook(self.comm)

    @staticmethod
    def default_devices_per_node():
        return node_size(world())

    def _run_devices(self, values, x, y, bounds, update, t):
        dev, link, on_host = self.device, self.link, self.strategy.updates_on_host
        t0 = time.perf_counter()
        if on_host:
            self._host_params(values)
        elif values is not None:
            self.load_state_dict({"values": values})
        link.reset()
        a, b = bounds[self.rank]
        t1 = time.perf_counter()
        loss, times = dev.compute(x[a:b], y[a:b])
        t2 = time.perf_counter()
        self.comm.Allgather(np.array([loss, times["compute"], dev.split_sq_norm], np.float64),
                            self._stats)  # every rank's loss, seconds and |g_i|^2, on every rank
        t.set_params, t.compute, t.fetch = t1 - t0, times["compute"], times["fetch"]
        t.sync = time.perf_counter() - t2  # every rank waits here for the slowest device
        w = self.strategy.weights([d - c for c, d in bounds])[self.rank]
        refused = None
        try:
            times = dev.exchange(w, None if on_host else update)
            t.exchange, t.update = times["exchange"], times["update"]
        except NonFiniteGradient as e:  # every rank decides alike (strategies.py)
            refused = e
        parts = self._count_bytes()
        if refused:
            raise refused
        view = HostView(self.size, self.shapes, grad=lambda r: link.rows[r]) if on_host else None
        norms = list(zip(self._stats[:, 2], parts))
        return list(self._stats[:, 0]), list(self._stats[:, 1]), view, norms

    def _count_bytes(self):
        """Every rank's byte counts, on every rank; with them (the same message) each
        rank's part of |g|^2 (``Device.batch_sq_part``), returned."""
        mine = np.array([self.link.sent, self.link.received, self.device.batch_sq_part],
                        np.float64)
        every = np.empty((self.size, 3), np.float64)
        self.comm.Allgather(mine, every)
        self.last_bytes = [{"sent": int(s), "received": int(r), "batch": 0}
                           for s, r, _ in every]
        return list(every[:, 2])

    def _host_params(self, values):
        """The host gather: rank 0's parameters in rank 0's replica (the others' replicas
        hold them since the last step's broadcast; on first use rank 0's win)."""
        if self.rank == ROOT:
            flatten(values, out=self.device.params)
        if not self._synced:
            self.comm.Bcast([self.device.params, mpi().FLOAT], root=ROOT)
            self._synced = True

    def _run_host(self, view, sizes, values, update, loss, t):
        """Rank 0 stacks and updates; every rank waits for its verdict, then receives the
        new parameters (or the gradient) into its replica by ``Bcast``."""
        verdict, error, grads, state = _OK, None, None, None  # and rank 0's |g|^2 below
        out = self.device.params if update is not None else self.device.grad
        if self.rank == ROOT:
            try:
                grads, new, state = super()._run_host(view, sizes, values, update, loss, t)
                flatten(grads if update is None else new, out=out)
            except NonFiniteGradient as e:
                verdict, error = _NON_FINITE, e
            except Exception as e:  # noqa: BLE001 - passed on to every rank, then re-raised
                verdict, error = _FAILED, e
        t0 = time.perf_counter()
        view.batch_sq_norm = self._share_verdict(verdict, error, view.batch_sq_norm)
        t1 = time.perf_counter()
        self.comm.Bcast([out, mpi().FLOAT], root=ROOT)  # into every replica (or gradient)
        if self.rank != ROOT:
            self.last_bytes[self.rank]["received"] += out.nbytes
        received = [v.copy() for v in unflatten(out, self.shapes)]
        t.sync += t1 - t0
        t.scatter = time.perf_counter() - t1  # the parameters travel back to the devices
        if update is None:
            return received, None, None
        return (grads if self.rank == ROOT else None), received, state

    def step_gradient(self):
        return [g.copy() for g in unflatten(self.device.grad, self.shapes)]  # every rank: whole

    # -- the devices' state, on demand --------------------------------------------------
    def load_state_dict(self, sd):
        """Collective: rank 0's ``sd["values"]`` and ``sd["state"]`` (None: kept) reach every
        rank, which keeps its part of the state."""
        if self.strategy.updates_on_host:
            return
        P = self.model.n_params
        has = np.array([sd.get("values") is not None, len(sd.get("state") or [])], np.int64)
        self.comm.Bcast(has, root=ROOT)  # rank 0 decides what is loaded
        if has[0]:
            if self.rank == ROOT:
                flatten(sd["values"], out=self.device.params)
            self.comm.Bcast([self.device.params, mpi().FLOAT], root=ROOT)
        if has[1]:
            flat = np.empty((int(has[1]), P), floatX)  # once per load, not per step
            if self.rank == ROOT:
                for k, slot in enumerate(sd["state"]):
                    flatten(slot, out=flat[k])
            self.comm.Bcast([flat, mpi().FLOAT], root=ROOT)
            self.device.load(state=flat)
        self._synced = True

    def state_dict(self, slots=None, gather=True):
        """The parameters (every rank holds them all) and the optimizer state: every rank's
        own where each holds all of it; the sharded optimizer's shards gathered to rank 0
        when ``gather`` (collective: every rank must call it), else None there."""
        if self.strategy.updates_on_host:
            return {"values": None, "state": None}
        dev, P = self.device, self.model.n_params
        values = [v.copy() for v in unflatten(dev.params, self.shapes)]
        if not slots or dev.state is None:
            return {"values": values, "state": None}
        if dev.state_range == (0, P):
            return {"values": values, "state": [[a.copy() for a in unflatten(row, self.shapes)]
                                                for row in dev.state]}
        if not gather:
            return {"values": values, "state": None}
        full = np.zeros((slots, P), floatX) if self.rank == ROOT else None
        ranges = [self.strategy.state_range(r, self.size, P) for r in range(self.size)]
        for k in range(slots):  # each rank's shard lands at its range of rank 0's row k
            self.link.gather_ranges(dev.state[k], ranges, None if full is None else full[k])
        state = [unflatten(row, self.shapes) for row in full] if self.rank == ROOT else None
        return {"values": values, "state": state}

    def _share_verdict(self, verdict, error, batch_sq_norm):
        """Broadcast rank 0's verdict and |g|^2 (the others wait here for rank 0's update);
        on failure every rank raises (rank 0 its own error). Returns |g|^2 on every rank."""
        flag = np.array([verdict, batch_sq_norm or 0.0], dtype=np.float64)
        self.comm.Bcast([flag, mpi().DOUBLE], root=ROOT)
        if flag[0] == _OK:
            return float(flag[1])
        text = None
        if self.rank == ROOT:
            text = str(error) if flag[0] == _NON_FINITE else "".join(
                traceback.format_exception(type(error), error, error.__traceback__))
        text = self.comm.bcast(text, root=ROOT)  # a short string, only when a step fails
        if self.rank == ROOT:
            raise error
        raise NonFiniteGradient(text) if flag[0] == _NON_FINITE else DeviceError(ROOT, text)

    def device_memory(self):
        """Every rank's bytes (parameters, gradient, optimizer state, scratch), on every rank."""
        return self.comm.allgather(self.device.held())

    def device_rss(self):
        """Every rank's resident memory in bytes (psutil), on every rank."""
        import psutil
        return self.comm.allgather(psutil.Process().memory_info().rss)

    def __repr__(self):
        return (f"<MPIEngine {self.model.spec.describe()} rank {self.rank} of {self.size}, "
                f"strategy={self.strategy!r}>")
