"""The same data-parallel step on MPI ranks: the engine for one machine or many.

Every rank runs the same program (SPMD) and is one device. Every rank holds the same
full batch, takes its own split (rank r = device r), computes the gradient of that split
and then runs the strategy's part (:mod:`mgpu_lab.engines.strategies`) over an
:class:`MPILink`, this file's transport: ``Sendrecv``/``Send``/``Recv`` of float32
buffers for the point-to-point algorithms (ring, sharded, hierarchical), ``Gatherv`` to
rank 0 for the host gather. Rank 0 is the host: with ``strategy="host"`` it stacks the
gathered gradients, updates and broadcasts the new parameters (``Bcast``); with the
others every rank updates itself and rank 0 gathers what a checkpoint needs (the
sharded optimizer's state shards).

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
from .strategies import HostView
from .update import DeviceStep

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
    """One rank's end of the MPI transport, as strategies use it."""

    def __init__(self, comm, n_params):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.rows = np.empty((self.size, n_params), floatX) if self.rank == ROOT else None

    def sendrecv(self, send, dest, recv, source):
        F = mpi().FLOAT
        if send is not None and recv is not None:  # both at once: no rank waits on a blocked send
            self.comm.Sendrecv([send, F], dest=dest, sendtag=0, recvbuf=[recv, F], source=source,
                               recvtag=0)
        elif send is not None:
            self.comm.Send([send, F], dest=dest, tag=0)
        elif recv is not None:
            self.comm.Recv([recv, F], source=source, tag=0)

    def to_host(self, flat):
        """Gatherv: rank i's ``flat`` (P,) lands in row i of rank 0's ``rows`` (N, P)."""
        P, F = flat.size, mpi().FLOAT
        recv = [self.rows, [P] * self.size, [i * P for i in range(self.size)], F] \
            if self.rank == ROOT else None
        self.comm.Gatherv([flat, F], recv, root=ROOT)
        return self.rows

    def gather_ranges(self, flat, ranges, out):
        """Gatherv of each rank's ``flat[a:b]`` (its range in ``ranges``) into ``out`` on rank 0."""
        a, b = ranges[self.rank]
        recv = [out, [d - c for c, d in ranges], [c for c, _ in ranges], mpi().FLOAT] \
            if self.rank == ROOT else None
        self.comm.Gatherv([np.ascontiguousarray(flat[a:b]), mpi().FLOAT], recv, root=ROOT)


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

    ``step`` runs on every rank with the same batch; each rank computes its own split.
    With 'host' the optimizer state lives on rank 0 alone, as on the chapter's host; with
    'sharded' each rank keeps its own shard current and rank 0 gathers all of them: save
    from rank 0.
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
        self._fn = self.model.loss_and_gradients_function()  # every rank compiles its own
        self.shapes, P = self.model.param_shapes, self.model.n_params
        self.link = MPILink(self.comm, P)
        self._grad = np.empty(P, dtype=floatX)  # this rank's gradient, then its work buffer
        self._new = np.empty(P, dtype=floatX)  # its parameters after its update
        self._out = np.empty(P, dtype=floatX)  # rank 0's outcome, broadcast (host gather)
        self._stats = np.empty((self.size, 2), dtype=np.float64)  # (loss, compute s) per rank
        self._state, self._synced, self._held = {}, False, None
        if self.size > 1:
            install_abort_hook(self.comm)

    @staticmethod
    def default_devices_per_node():
        return node_size(world())

    def _run_devices(self, values, x, y, bounds, update, t):
        t0 = time.perf_counter()
        values = self._sync(values)
        self.model.set_values(values)
        a, b = bounds[self.rank]
        t1 = time.perf_counter()
        loss, *grads = self._fn(x[a:b], y[a:b])
        t2 = time.perf_counter()
        flatten(grads, out=self._grad)
        self.comm.Allgather(np.array([float(loss), t2 - t1]), self._stats)  # every rank: all losses
        t.set_params, t.compute, t.sync = t1 - t0, t2 - t1, time.perf_counter() - t2
        dev = self._device(values, update, [d - c for c, d in bounds], float(loss))
        t3 = time.perf_counter()
        refused = None
        try:
            self.strategy.on_device(self.link, dev)
        except NonFiniteGradient as e:
            refused = e
        spent = time.perf_counter() - t3
        if self.strategy.updates_on_host:
            t.fetch = spent  # the Gatherv: the gradients travel to the host
        else:
            t.exchange, t.update = spent - dev.seconds_update, dev.seconds_update
        self._agree(refused)
        self._held = dev.held(self.model.params)
        return list(self._stats[:, 0]), list(self._stats[:, 1]), self._host_view(dev)

    def _device(self, values, update, sizes, loss):
        """This rank's :class:`DeviceStep`; the update and state only where devices update."""
        P, rule, state = self.model.n_params, None, None
        if update is not None and not self.strategy.updates_on_host:
            S = update.optimizer.slots
            if self._state.get("in", np.empty((0, P))).shape != (S, P):
                self._state = {"in": np.empty((S, P), floatX), "out": np.empty((S, P), floatX)}
            for k, slot in enumerate(update.state):
                flatten(slot, out=self._state["in"][k])
            rule, state = update, self._state
        return DeviceStep(self._grad, flatten(values), rule,
                          self.strategy.weights(sizes)[self.rank], loss,
                          self.strategy.state_range(self.rank, self.size, P), new=self._new,
                          state_in=state and state["in"], state_out=state and state["out"])

    def _agree(self, refused):
        """Every rank refuses the step if any did (or the ranks' parameters would part)."""
        flag = self.comm.allreduce(int(refused is not None), op=mpi().MAX)
        if flag:
            raise refused or NonFiniteGradient("another rank refused this step: its gradient or "
                                               "update was NaN or infinite; parameters left untouched")

    def _host_view(self, dev):
        """Rank 0 sees the gathered rows (host gather), or every rank's host range of the
        gradient and state (gathered here); the other ranks see their own buffers."""
        S = 0 if dev.update is None else dev.update.optimizer.slots
        if self.strategy.updates_on_host:
            rows = self.link.rows
            return HostView(self.size, self.shapes, 0, grad=lambda r: rows[r])
        grad, state = self._grad, self._state.get("out", np.empty((0, self._grad.size), floatX))
        ranges = [self.strategy.host_range(r, self.size, self._grad.size) for r in range(self.size)]
        if any(b > a for a, b in ranges[1:]):  # shards: rank 0 gathers the others' ranges
            full_g = np.empty_like(self._grad) if self.rank == ROOT else None
            full_s = np.empty((S, self._grad.size), floatX) if self.rank == ROOT else None
            self.link.gather_ranges(self._grad, ranges, full_g)
            for k in range(S):
                self.link.gather_ranges(state[k], ranges, None if full_s is None else full_s[k])
            if self.rank == ROOT:
                grad, state = full_g, full_s
        return HostView(self.size, self.shapes, S, grad=lambda r: grad, new=lambda r: self._new,
                        state=lambda r: state)

    def _run_host(self, view, sizes, values, update, loss, t):
        if not self.strategy.updates_on_host:  # every rank reads its own view
            grads, new, state = super()._run_host(view, sizes, values, update, loss, t)
            return [g.copy() for g in grads], new and [v.copy() for v in new], \
                state and [[a.copy() for a in slot] for slot in state]
        verdict, error, grads, state = _OK, None, None, None
        if self.rank == ROOT:
            try:
                grads, new, state = super()._run_host(view, sizes, values, update, loss, t)
                flatten(grads if update is None else new, out=self._out)
            except NonFiniteGradient as e:
                verdict, error = _NON_FINITE, e
            except Exception as e:  # noqa: BLE001 - passed on to every rank, then re-raised
                verdict, error = _FAILED, e
        t0 = time.perf_counter()
        self._share_verdict(verdict, error)  # the others wait here for rank 0's update
        t1 = time.perf_counter()
        self.comm.Bcast([self._out, mpi().FLOAT], root=ROOT)  # new parameters (or gradient)
        received = [v.copy() for v in unflatten(self._out, self.shapes)]
        t.sync += t1 - t0
        t.scatter = time.perf_counter() - t1  # the parameters travel back to the devices
        if update is None:
            return received, None, None
        return grads, received, state

    def _sync(self, values):
        """On first use, rank 0's parameters win: every rank starts from the same point."""
        if self._synced:
            return values
        flat = flatten(values)
        self.comm.Bcast([flat, mpi().FLOAT], root=ROOT)
        self._synced = True
        return [v.copy() for v in unflatten(flat, self.shapes)]

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

    def device_memory(self):
        """Every rank's bytes (parameters, gradients, optimizer state), on every rank."""
        if self._held is None:
            raise ValueError("no step has run yet: device_memory() counts what a step used")
        return self.comm.allgather(self._held)

    def __repr__(self):
        return (f"<MPIEngine {self.model.spec.describe()} rank {self.rank} of {self.size}, "
                f"strategy={self.strategy!r}>")
