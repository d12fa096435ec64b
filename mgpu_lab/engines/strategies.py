"""How N gradients become one update: one class per way, one registry of names.

A strategy owns four things, and an engine asks it for each:

    weights(sizes)        the split weights n_i / B (gradients.split_weights, once)
    on_device(link, dev)  what a device does after computing its gradient, talking to the
                          other devices only through ``link`` (a transport, below)
    updates_on_host       where the update runs: on the host, or on the devices
    on_host(view, ...)    what the host does afterwards: stack and update, or read back

    HostGather            devices hand their gradients to the host, which stacks
                          sum_i (n_i/B) g_i and runs the update (the chapter's way)
    RingAllReduce         devices scale by n_i/B, reduce-scatter + all-gather around a ring,
                          and every device runs the same update on its own copy
    ShardedOptimizer      ZeRO stage 1: reduce-scatter, each device updates only its 1/N
                          shard with only its shard of the optimizer state, all-gather
    HierarchicalAllReduce nodes of G devices: reduce inside a node to its leader, ring
                          across the leaders, broadcast inside the node

A *link* is one device's end of a transport. Engines supply it; strategies use only:

    link.rank, link.size              this device, and how many there are
    link.sendrecv(send, dest, recv, source)   float32 arrays; either side may be None
    link.to_host(flat) -> rows|None   hand a gradient to the host (gathered on the host)

:class:`Group` makes a sub-link of some ranks out of any link (a node, the leaders), so
every algorithm below is written once and runs on the pool's shared-memory links and on
MPI ranks alike. Like PyTorch DDP's communication hooks, a strategy sees a flat gradient
buffer and a process group; like Horovod, each transport lives in its own file
(the pool's shared-memory links in engines/worker.py, MPI's in engines/mpi.py).
"""
import time

import numpy as np

from .._theano import floatX
from ..collectives import device_steps, ring_chunks
from ..gradients import split_weights, stack_gradients
from .update import apply_update, unflatten

__all__ = ["Strategy", "HostGather", "RingAllReduce", "ShardedOptimizer",
           "HierarchicalAllReduce", "STRATEGIES", "get_strategy", "Group",
           "ring_allreduce", "reduce_scatter", "all_gather", "owned_chunk", "HostView"]


# -- the algorithms, on any link --------------------------------------------------------
def _ring_phase(link, buf, steps, scratch):
    """Run some of ``device_steps``: send one chunk right, receive one from the left."""
    N, r = link.size, link.rank
    chunks = ring_chunks(buf.size, N)
    right, left = (r + 1) % N, (r - 1) % N
    for op, send, recv in steps:
        (a, b), (c, d) = chunks[send], chunks[recv]
        got = scratch[:d - c]
        link.sendrecv(buf[a:b], right, got, left)
        if op == "add":
            buf[c:d] += got  # reduce-scatter: left's partial sum onto mine
        else:
            buf[c:d] = got  # all-gather: left's finished chunk
    return buf


def owned_chunk(rank, size):
    """The chunk a device holds complete after the ring's reduce-scatter: (rank+1) mod N
    (chapter 8's schedule); under ShardedOptimizer it is the device's shard."""
    return (rank + 1) % size


def reduce_scatter(link, buf, scratch):
    """In place: afterwards chunk ``owned_chunk(rank)`` of ``buf`` is the sum over devices."""
    return _ring_phase(link, buf, device_steps(link.rank, link.size)[:link.size - 1], scratch)


def all_gather(link, buf, scratch):
    """In place: each device starts with its owned chunk; afterwards all have every chunk."""
    return _ring_phase(link, buf, device_steps(link.rank, link.size)[link.size - 1:], scratch)


def ring_allreduce(link, buf, scratch):
    """In place: ``buf`` becomes the sum over devices (Patarasuk & Yuan 2009), 2(N-1) steps
    of :func:`mgpu_lab.collectives.device_steps`; the float32 sums equal
    :func:`mgpu_lab.collectives.simulate_ring_allreduce` bit for bit."""
    return _ring_phase(link, buf, device_steps(link.rank, link.size), scratch)


class Group:
    """The sub-link of ``ranks`` (global ranks, in ring order) seen from one of them."""

    def __init__(self, link, ranks):
        self.link, self.ranks = link, list(ranks)
        self.rank, self.size = self.ranks.index(link.rank), len(self.ranks)

    def sendrecv(self, send, dest, recv, source):
        self.link.sendrecv(send, None if dest is None else self.ranks[dest],
                           recv, None if source is None else self.ranks[source])


class HostView:
    """What the host sees of the devices after their part of a step, for ``on_host``: per
    device ``r``, ``grad(r)`` (its gradient, or its work buffer after an exchange),
    ``new(r)`` (its parameters after its update) and ``state(r)`` ((slots, P) optimizer
    state), all flat. Engines fill it from their buffers."""

    def __init__(self, n_devices, shapes, slots, grad, new=None, state=None):
        self.n_devices, self.shapes, self.slots = n_devices, shapes, slots
        self.n_params = int(sum(np.prod(s, dtype=np.int64) for s in shapes))
        self.grad, self.new, self.state = grad, new, state


# -- the strategies ---------------------------------------------------------------------
class Strategy:
    """Base: see the module docstring. ``needs_links``: devices talk to each other."""

    name, updates_on_host, needs_links = "?", False, True

    def weights(self, sizes):
        return split_weights(sizes)

    def check(self, n_devices):
        """Raise ValueError if this strategy cannot run on ``n_devices``."""

    def for_engine(self, devices_per_node=None, default_nodes=None):
        """This strategy as an engine runs it: ``devices_per_node`` given by the user, or
        ``default_nodes()`` (the engine's own nodes, or None) when it matters."""
        return self

    def host_range(self, rank, size, P):
        """The part [a, b) of the flat result (gradient, parameters, optimizer state) the
        host reads from device ``rank`` afterwards: device 0 has all of it by default."""
        return (0, P) if rank == 0 else (0, 0)

    def state_range(self, rank, size, P):
        """The part of the optimizer state device ``rank`` holds: all of it by default."""
        return (0, P)

    def on_device(self, link, dev):
        raise NotImplementedError

    def on_host(self, view, sizes, values, update, loss, t):
        """``(grads, new_values, new_state)`` from what the devices left in ``view`` (a
        :class:`HostView`): by default, each device's host_range."""
        P = view.n_params
        grads, new, state = np.empty(P, floatX), np.empty(P, floatX), np.empty((view.slots, P), floatX)
        for r in range(len(sizes)):
            a, b = self.host_range(r, len(sizes), P)
            grads[a:b], new[a:b] = view.grad(r)[a:b], view.new(r)[a:b]
            state[:, a:b] = view.state(r)[:, a:b]
        shapes = view.shapes
        if update is None:
            return unflatten(grads, shapes), None, None
        return (unflatten(grads, shapes), unflatten(new, shapes),
                [unflatten(s, shapes) for s in state])

    def __repr__(self):
        return f"{type(self).__name__}()"


class HostGather(Strategy):
    """The chapter's way: the host fetches every gradient, stacks, updates, sends back."""

    name, updates_on_host, needs_links = "host", True, False

    def on_device(self, link, dev):
        return link.to_host(dev.grad)  # the host's rows (N, P) where the host is, else None

    def on_host(self, view, sizes, values, update, loss, t):
        t0 = time.perf_counter()  # stacked flat: one multiply-add per device over all P
        flat = stack_gradients([[view.grad(r)] for r in range(view.n_devices)], sizes)[0]
        grads = unflatten(flat, view.shapes)
        t.stack = time.perf_counter() - t0
        if update is None:
            return grads, None, None
        new, state = apply_update(update, values, grads, loss)
        return grads, new, state


class RingAllReduce(Strategy):
    """Scale by n_i/B, ring all-reduce, every device runs the same update on its copy."""

    name = "ring"

    def on_device(self, link, dev):
        dev.grad *= dev.weight  # (n_i / B) g_i, as stack_gradients weighs it
        ring_allreduce(link, dev.grad, dev.scratch)
        dev.update_range(0, dev.n_params)


class ShardedOptimizer(Strategy):
    """ZeRO stage 1 (Rajbhandari et al. 2020): the optimizer state is cut into N shards.

    Reduce-scatter leaves device r the summed gradient of its shard (chunk
    ``owned_chunk(r, N)`` of :func:`~mgpu_lab.collectives.ring_chunks`; uneven when N does
    not divide P); it runs the rule on that shard with that shard's state, the only state
    it holds; an all-gather of the updated shards gives every device all parameters. The
    bytes moved are the ring all-reduce's. Without an update it all-gathers the gradient.
    """

    name = "sharded"

    def _shard(self, rank, size, P):
        return ring_chunks(P, size)[owned_chunk(rank, size)]

    host_range = state_range = _shard

    def on_device(self, link, dev):
        dev.grad *= dev.weight
        reduce_scatter(link, dev.grad, dev.scratch)
        a, b = self._shard(link.rank, link.size, dev.n_params)
        if not dev.has_update:
            all_gather(link, dev.grad, dev.scratch)
            return
        new = dev.update_range(a, b, check=False)  # refuse only once all shards are back
        all_gather(link, new, dev.scratch)
        dev.check_finite(new)


class HierarchicalAllReduce(Strategy):
    """Two levels (as multi-node runs do): nodes of ``devices_per_node`` = G devices.

    1. inside each node, every device sends its scaled gradient to the node's leader
       (its first device), which adds them; 2. the N/G leaders run the ring all-reduce;
    3. each leader sends the sum to the devices of its node; all apply the update.
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

    def on_device(self, link, dev):
        G = self.devices_per_node
        leader = link.rank - link.rank % G
        members = range(leader, leader + G)
        dev.grad *= dev.weight
        if link.rank == leader:
            for m in members[1:]:  # 1. reduce inside the node, in member order
                link.sendrecv(None, None, dev.scratch, m)
                dev.grad += dev.scratch
            leaders = Group(link, range(0, link.size, G))
            ring_allreduce(leaders, dev.grad, dev.scratch)  # 2. across the nodes
            for m in members[1:]:  # 3. broadcast inside the node
                link.sendrecv(dev.grad, m, None, None)
        else:
            link.sendrecv(dev.grad, leader, None, None)
            link.sendrecv(None, None, dev.grad, leader)
        dev.update_range(0, dev.n_params)

    def __repr__(self):
        return f"HierarchicalAllReduce(devices_per_node={self.devices_per_node})"


STRATEGIES = {s.name: s for s in (HostGather, RingAllReduce, ShardedOptimizer,
                                  HierarchicalAllReduce)}


def get_strategy(strategy, **options):
    """A strategy object from its name (``STRATEGIES``) or an object, as it is."""
    if isinstance(strategy, Strategy):
        return strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy](**options)
