"""How N gradients become one update: one class per way, one registry of names.

A strategy is an algorithm that a long-lived :class:`~mgpu_lab.engines.device.Device` runs
on its own buffers, over a *link* the engine supplies. It owns:

    weights(sizes)          the split weights n_i / B (gradients.split_weights, once)
    state_range(r, N, P)    the part [a, b) of the flat optimizer state device r owns
    host_range(r, N, P)     what the host reads from device r when it consolidates
    norm_range(r, N, P)     device r's share of |g|^2 of the reduced gradient (a partition)
    message_floats(N, P)    the largest message a device receives (its scratch, sized once)
    wire_dtype              what a value travels as between devices: float32, or float16
                            for "ring16" (the link must carry it: the pool's does)
    on_device(link, dev)    what a device does after computing its gradient
    updates_on_host         where the update runs: on the host, or on the devices
    on_host(view, ...)      the host's part of a step (the host gather: stack and update)

    HostGather            devices hand their gradients to the host, which stacks
                          sum_i (n_i/B) g_i and runs the update (the chapter's way); the
                          devices hold only their replica, received every step
    RingAllReduce         devices scale by n_i/B, reduce-scatter + all-gather around a ring,
                          and every device runs the same update on its own replica and state;
                          "ring16": the same with float16 on the wire, float32 sums
    ShardedOptimizer      ZeRO stage 1: reduce-scatter, each device updates only its 1/N
                          shard with its 1/N of the optimizer state, all-gather the shards
    HierarchicalAllReduce nodes of G devices: reduce-scatter inside a node, one ring per
                          local rank across the nodes on its 1/G shard, all-gather inside
                          the node (NCCL's and Horovod's way; the cost model's algorithm)

A *link* is one device's end of a transport. Engines supply it; strategies use only:

    link.rank, link.size              this device, and how many there are
    link.sendrecv(send, dest, recv, source, add=False)
                                      float32 arrays, either side may be None; the received
                                      floats are written into ``recv``, or added to it
    link.to_host(flat)                hand a gradient to the host (the host gather's fetch)

and every link counts the bytes it sends and receives. :class:`Group` makes a sub-link of
some ranks out of any link (a node, the ranks of one local rank across nodes), so every
algorithm below is written once and runs on the pool's shared-memory links and on MPI
ranks alike. Like PyTorch DDP's communication hooks, a strategy sees a flat gradient
buffer and a process group; like Horovod, each transport lives in its own file (the
pool's shared-memory links in engines/worker.py, MPI's in engines/mpi.py).
"""
import time

import numpy as np

from .._theano import floatX
from ..collectives import device_steps, ring_chunks
from ..gradients import split_weights, stack_gradients
from .update import apply_update, unflatten

__all__ = ["Strategy", "HostGather", "RingAllReduce", "RingAllReduce16", "ShardedOptimizer",
           "HierarchicalAllReduce", "STRATEGIES", "get_strategy", "Group",
           "ring_allreduce", "reduce_scatter", "all_gather", "owned_chunk", "HostView",
           "agree"]


# -- the algorithms, on any link --------------------------------------------------------
def _ring_phase(link, buf, steps):
    """Run some of ``device_steps``: send one chunk right, receive one from the left
    (added to mine in the reduce-scatter, copied in the all-gather)."""
    N, r = link.size, link.rank
    chunks = ring_chunks(buf.size, N)
    right, left = (r + 1) % N, (r - 1) % N
    for op, send, recv in steps:
        (a, b), (c, d) = chunks[send], chunks[recv]
        link.sendrecv(buf[a:b], right, buf[c:d], left, add=op == "add")
    return buf


def owned_chunk(rank, size):
    """The chunk a device holds complete after the ring's reduce-scatter: (rank+1) mod N
    (chapter 8's schedule); under ShardedOptimizer it is the device's shard."""
    return (rank + 1) % size


def reduce_scatter(link, buf):
    """In place: afterwards chunk ``owned_chunk(rank)`` of ``buf`` is the sum over devices."""
    return _ring_phase(link, buf, device_steps(link.rank, link.size)[:link.size - 1])


def all_gather(link, buf):
    """In place: each device starts with its owned chunk; afterwards all have every chunk."""
    return _ring_phase(link, buf, device_steps(link.rank, link.size)[link.size - 1:])


def ring_allreduce(link, buf):
    """In place: ``buf`` becomes the sum over devices (Patarasuk & Yuan 2009), 2(N-1) steps
    of :func:`mgpu_lab.collectives.device_steps`; the float32 sums equal
    :func:`mgpu_lab.collectives.simulate_ring_allreduce` bit for bit."""
    return _ring_phase(link, buf, device_steps(link.rank, link.size))


def agree(link, refuse):
    """True on every device if ``refuse`` is true on any: a ring all-reduce of N flags (one
    float each, 8(N-1) bytes per device). Devices that update only their own shard see
    only their shard's gradient, so they must agree before any of them changes its state."""
    flags = np.full(link.size, float(bool(refuse)), floatX)
    return bool(ring_allreduce(link, flags).sum() > 0)


class Group:
    """The sub-link of ``ranks`` (global ranks, in ring order) seen from one of them."""

    def __init__(self, link, ranks):
        self.link, self.ranks = link, list(ranks)
        self.rank, self.size = self.ranks.index(link.rank), len(self.ranks)

    def sendrecv(self, send, dest, recv, source, add=False):
        self.link.sendrecv(send, None if dest is None else self.ranks[dest],
                           recv, None if source is None else self.ranks[source], add=add)


class HostView:
    """What the host gather's host sees after the devices' part of a step: ``grad(r)``,
    device r's flat gradient. Engines fill it from their buffers; the host gather writes
    ``batch_sq_norm``, |g|^2 of the gradient it stacked (MPI: broadcast to every rank)."""

    def __init__(self, n_devices, shapes, grad):
        self.n_devices, self.shapes, self.grad = n_devices, shapes, grad
        self.batch_sq_norm = None


def _max_chunk(P, N):
    return max((b - a for a, b in ring_chunks(P, N)), default=0)


# -- the strategies ---------------------------------------------------------------------
class Strategy:
    """Base: see the module docstring. ``needs_links``: devices talk to each other. This
    base class is a ring of N devices that all hold all of the optimizer state."""

    name, updates_on_host, needs_links = "?", False, True
    zero_stage = 0  # the memory model's sharding stage for a device's state (ZeRO)
    wire_dtype = floatX  # what a value travels as between devices

    def weights(self, sizes):
        return split_weights(sizes)

    def check(self, n_devices):
        """Raise ValueError if this strategy cannot run on ``n_devices``."""

    def for_engine(self, devices_per_node=None, default_nodes=None):
        """This strategy as an engine runs it: ``devices_per_node`` given by the user, or
        ``default_nodes()`` (the engine's own nodes, or None) when it matters."""
        return self

    def host_range(self, rank, size, P):
        """The part [a, b) of the flat parameters and optimizer state the host reads from
        device ``rank`` when it consolidates: device 0 has all of it by default."""
        return (0, P) if rank == 0 else (0, 0)

    def state_range(self, rank, size, P):
        """The part of the optimizer state device ``rank`` holds: all of it by default."""
        return (0, P)

    def norm_range(self, rank, size, P):
        """The part [a, b) of the reduced gradient over which device ``rank`` takes its
        share of |g|^2 after the exchange (the ranges partition P; the host sums the
        shares). By default every device holds the whole sum: each takes its ring chunk,
        1/N of the pass, at the same time."""
        return ring_chunks(P, size)[rank]

    def message_floats(self, size, P):
        """The most floats a device receives in one message: a ring chunk."""
        return _max_chunk(P, size)

    def on_device(self, link, dev):
        raise NotImplementedError

    def on_host(self, view, sizes, values, update, loss, t):
        raise NotImplementedError(f"{self.name}: the devices update, the host does nothing")

    def __repr__(self):
        return f"{type(self).__name__}()"


class HostGather(Strategy):
    """The chapter's way: the host fetches every gradient, stacks, updates, sends back."""

    name, updates_on_host, needs_links = "host", True, False

    def state_range(self, rank, size, P):
        return (0, 0)  # the state lives on the host

    def norm_range(self, rank, size, P):
        return (0, 0)  # the host takes |g|^2 of its own stack

    def message_floats(self, size, P):
        return 0  # devices never receive from each other

    def on_device(self, link, dev):
        link.to_host(dev.grad)  # 4P bytes up; the host stacks them

    def on_host(self, view, sizes, values, update, loss, t):
        t0 = time.perf_counter()  # stacked flat: one multiply-add per device over all P
        flat = stack_gradients([[view.grad(r)] for r in range(view.n_devices)], sizes)[0]
        grads = unflatten(flat, view.shapes)
        view.batch_sq_norm = float(np.dot(flat, flat))  # |g|^2 where the stack lives
        t.stack = time.perf_counter() - t0
        if update is None:
            return grads, None, None
        new, state = apply_update(update, values, grads, loss)
        return grads, new, state


class RingAllReduce(Strategy):
    """Scale by n_i/B, ring all-reduce, every device runs the same update on its copy.

    ``wire_dtype="float16"`` (the name "ring16"): each chunk travels as float16, half the
    bytes, and is added to the receiver's float32 partial sum (as PyTorch DDP's
    ``fp16_compress_hook`` casts a bucket to float16 for the exchange; here the sums stay
    float32). A partial sum is rounded to float16 at every hop, about 2^-11 of its size;
    the device that completes a chunk rounds its own copy too, so that after the
    all-gather every device holds the same bits and runs the same update. A sum beyond
    float16's range (65504) arrives infinite: the step is refused on every device.
    """

    name = "ring"
    WIRE_DTYPES = ("float32", "float16")

    def __init__(self, wire_dtype=floatX):
        if str(wire_dtype) not in self.WIRE_DTYPES:
            raise ValueError(f"wire_dtype must be one of {', '.join(self.WIRE_DTYPES)} (what "
                             f"a gradient value travels as), got {wire_dtype!r}")
        self.wire_dtype = str(wire_dtype)

    def on_device(self, link, dev):
        dev.scale_gradient()
        if self.wire_dtype == floatX:
            ring_allreduce(link, dev.grad)
        else:
            reduce_scatter(link, dev.grad)
            a, b = ring_chunks(dev.n_params, link.size)[owned_chunk(link.rank, link.size)]
            _round_to(dev.grad[a:b], self.wire_dtype)  # as the others will receive it
            all_gather(link, dev.grad)
        dev.refuse_if_not_finite(0, dev.n_params)  # the same bits on every device
        dev.update_range(0, dev.n_params)

    def __repr__(self):
        return "RingAllReduce()" if self.wire_dtype == floatX else \
            f"RingAllReduce(wire_dtype={self.wire_dtype!r})"


class RingAllReduce16(RingAllReduce):
    """The ring with float16 on the wire: ``RingAllReduce(wire_dtype="float16")``."""

    name = "ring16"

    def __init__(self, wire_dtype="float16"):
        super().__init__(wire_dtype)


def _round_to(buf, dtype, block=2 ** 18):
    """``buf`` (float32) rounded to ``dtype`` and back, in place, a block at a time (no
    temporary of the chunk's size); beyond the dtype's range a value becomes infinite."""
    with np.errstate(over="ignore"):
        for i in range(0, buf.size, block):
            buf[i:i + block] = buf[i:i + block].astype(dtype)


class ShardedOptimizer(Strategy):
    """ZeRO stage 1 (Rajbhandari et al. 2020): the optimizer state is cut into N shards.

    Reduce-scatter leaves device r the summed gradient of its shard (chunk
    ``owned_chunk(r, N)`` of :func:`~mgpu_lab.collectives.ring_chunks`; uneven when N does
    not divide P). The devices agree that every shard is finite (:func:`agree`), then
    each runs the rule on its shard with its shard of the state, the only state it holds;
    an all-gather of the updated shards gives every device all parameters. The bytes moved
    are the ring all-reduce's, plus the flags. Without an update it all-gathers the gradient.
    """

    name, zero_stage = "sharded", 1

    def _shard(self, rank, size, P):
        return ring_chunks(P, size)[owned_chunk(rank, size)]

    host_range = state_range = norm_range = _shard  # a device holds only its shard's sum

    def on_device(self, link, dev):
        dev.scale_gradient()
        reduce_scatter(link, dev.grad)
        a, b = self._shard(link.rank, link.size, dev.n_params)
        if agree(link, not dev.finite(a, b)):
            dev.refuse()
        if not dev.has_update:
            all_gather(link, dev.grad)
            return
        dev.update_range(a, b)
        all_gather(link, dev.params)  # every device's replica: all the updated shards


class HierarchicalAllReduce(Strategy):
    """Two levels (as multi-node runs do): nodes of ``devices_per_node`` = G devices.

    1. inside each node, a ring reduce-scatter: local rank l holds the node's sum of its
       1/G shard; 2. across the N/G nodes, the devices of local rank l run a ring
       all-reduce of that shard (G rings at once, one per local rank); 3. inside each node,
       a ring all-gather. Every device then holds the whole sum and applies the update.
    Bytes per device: 2(G-1)/G * 4P inside the node, 2(K-1)/K * 4P/G across (K = N/G
    nodes); with G = 1 it is the flat ring, with G = N the ring inside one node.
    ``devices_per_node=None`` takes G from the engine (MPI: the ranks sharing a machine).
    """

    name = "hierarchical"

    def __init__(self, devices_per_node=None):
        if devices_per_node is not None and (isinstance(devices_per_node, bool) or not
                                             isinstance(devices_per_node, (int, np.integer))
                                             or devices_per_node < 1):
            raise ValueError(f"devices_per_node must be a positive integer (devices in one "
                             f"node), got {devices_per_node!r}")
        self.devices_per_node = devices_per_node

    def check(self, n_devices):
        G = self.devices_per_node
        if G is not None and n_devices % G:
            raise ValueError(f"hierarchical all-reduce: {n_devices} devices do not make whole "
                             f"nodes of devices_per_node={G}; use a G that divides "
                             f"{n_devices} ({', '.join(str(g) for g in range(1, n_devices + 1) if n_devices % g == 0)})")

    def for_engine(self, devices_per_node=None, default_nodes=None):
        if self.devices_per_node is not None:
            return self
        G = devices_per_node
        if G is None and default_nodes is not None:
            G = default_nodes()
        if G is None:
            raise ValueError("the hierarchical all-reduce needs devices_per_node=G (devices in "
                             "one node; N must be a multiple of G): pass devices_per_node=G")
        return HierarchicalAllReduce(G)

    def groups(self, rank, size):
        """``(node, across)``: the ranks of this device's node, and the ranks of its local
        rank on every node (in node order)."""
        G = self.devices_per_node
        first, local = rank - rank % G, rank % G
        return range(first, first + G), range(local, size, G)

    def shard(self, rank, P):
        """The 1/G shard [a, b) device ``rank`` carries across the nodes."""
        G = self.devices_per_node
        return ring_chunks(P, G)[owned_chunk(rank % G, G)]

    def message_floats(self, size, P):
        G = self.devices_per_node
        shards = [b - a for a, b in ring_chunks(P, G)]
        return max([_max_chunk(P, G)] + [_max_chunk(s, size // G) for s in shards])

    def on_device(self, link, dev):
        node, across = self.groups(link.rank, link.size)
        dev.scale_gradient()
        node_link = Group(link, node)
        reduce_scatter(node_link, dev.grad)  # 1. the node's sum of my shard
        a, b = self.shard(link.rank, dev.n_params)
        ring_allreduce(Group(link, across), dev.grad[a:b])  # 2. across the nodes
        all_gather(node_link, dev.grad)  # 3. every shard back inside the node
        dev.refuse_if_not_finite(0, dev.n_params)
        dev.update_range(0, dev.n_params)

    def __repr__(self):
        return f"HierarchicalAllReduce(devices_per_node={self.devices_per_node})"


STRATEGIES = {s.name: s for s in (HostGather, RingAllReduce, ShardedOptimizer,
                                  HierarchicalAllReduce, RingAllReduce16)}


def get_strategy(strategy, **options):
    """A strategy object from its name (``STRATEGIES``) or an object, as it is."""
    if isinstance(strategy, Strategy):
        return strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy](**options)
