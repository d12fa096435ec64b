"""How long one exchange of the gradient takes, algorithm by algorithm (plain numbers in,
seconds out). Notation: P parameters, so the gradient is ``n_bytes`` = 4P bytes (float32;
2P with 16-bit gradients on the wire, ``costmodel.gradient_bytes(model, "fp16")``: every
bandwidth term below halves, no latency term changes); N devices; ``bw`` bytes/s per direction per link; ``latency`` (alpha) seconds per transfer
or per step of a collective.

    host gather (chapter 6):  every device sends 4P to the host, gets 4P back; the model
                              queues the 2N transfers at the host, one after another:
                              2 N (4P / bw + alpha). That is a pessimistic bound: PCIe
                              switches, several host links and sharded parameter servers
                              let transfers proceed together
    host gather under MPI:    rank 0 is a device, so 2 (N - 1) transfers, plus the stacking
                              rank 0 does itself (reads N gradients, writes one)
    ring:                     2 (N - 1) steps of 4P / N: 2 (N - 1) / N * 4P / bw + 2 (N - 1) alpha
    halving-doubling          (Rabenseifner; Thakur et al. 2005; N a power of two): a
                              reduce-scatter by recursive halving, an all-gather by recursive
                              doubling: the ring's bandwidth term in 2 log2 N steps
    recursive doubling:       log2 N steps, each swapping the whole 4P with one partner:
                              log2 N (4P / bw + alpha)  (latency-optimal, bandwidth-poor)
    double binary tree        (NCCL >= 2.4, Jeaugey 2019): two trees each carry half the
                              data, pipelined in chunks: the ring's bandwidth term,
                              2 (N - 1) / N * 4P / bw, and about 2 log2 N latencies
    sharded (ZeRO-1):         reduce-scatter + all-gather = the ring's bytes and steps

Recursive doubling is *not* "the tree" of NCCL: halving-doubling reaches the ring's bandwidth
term with only logarithmically many latencies, so the real choice is not latency against
bandwidth. ceil(log2 N) for an N that is not a power of two is an approximation (real
libraries add a pre- and post-step for the extra ranks).
"""
import math

__all__ = ["DEFAULT_LATENCY", "DEFAULT_HOST_MEMORY_BW", "ALGORITHMS", "ALIASES",
           "host_gather_seconds", "host_update_seconds", "mpi_host_seconds",
           "ring_allreduce_seconds", "halving_doubling_seconds",
           "recursive_doubling_seconds", "tree_allreduce_seconds", "double_tree_seconds",
           "sharded_seconds", "latency_steps", "comm_seconds", "bytes_per_device"]

# Assumption, not a measurement: the fixed cost of one transfer or one step of a collective
# (starting a copy, synchronising), in seconds.
DEFAULT_LATENCY = 10e-6

# Assumption: the host's memory bandwidth for stacking and updating, bytes/s: one socket's
# four DDR4 channels at the CPU family's fastest, 2400 MT/s (4 x 2400e6 x 8 B = 76.8 GB/s,
# the most a Xeon E5-2600 v4 socket, the DGX-1's CPU family, can move). Slower DIMMs and
# sustained (not peak) bandwidth are lower, so this term is optimistic.
DEFAULT_HOST_MEMORY_BW = 76.8e9

# Every algorithm the model knows; the engines run 'host', 'ring' and 'sharded'.
ALGORITHMS = ("host", "ring", "sharded", "halving_doubling", "recursive_doubling",
              "double_tree")
# Old name kept so that existing code runs: 'tree' meant recursive doubling.
ALIASES = {"tree": "recursive_doubling"}


def bytes_per_device(strategy, n_bytes, n_gpus, gpus_per_node=None):
    """Bytes one device sends (and receives) in one exchange of an ``n_bytes`` gradient, as
    the timing formulas charge them: 'host' n_bytes (up; as many down); 'ring' and 'sharded'
    2 (N - 1) / N * n_bytes; 'hierarchical' (nodes of G) 2 (G - 1) / G * n_bytes inside the
    node plus 2 (K - 1) / K * n_bytes / G across its K = N / G nodes. The engines count
    the same bytes on their transports (tests/test_strategies.py)."""
    N = int(n_gpus)
    if strategy == "host":
        return float(n_bytes)
    if strategy in ("ring", "sharded"):
        return 2 * (N - 1) / N * n_bytes
    if strategy == "hierarchical":
        G = int(gpus_per_node)
        K = N // G
        return 2 * (G - 1) / G * n_bytes + 2 * (K - 1) / K * n_bytes / G
    raise ValueError(f"bytes_per_device knows 'host', 'ring', 'sharded' and 'hierarchical', "
                     f"got {strategy!r}")


def _log2(n):
    return math.ceil(math.log2(int(n))) if n > 1 else 0


def host_gather_seconds(n_bytes, n_gpus, host_bw, latency=DEFAULT_LATENCY):
    """Every GPU sends ``n_bytes`` (4P) to the host and receives ``n_bytes`` back: 2N
    transfers, each paying ``latency``, queued one after another at the host: the model's
    pessimistic bound (transfers over separate links or PCIe switches can overlap)."""
    return 2 * n_gpus * (n_bytes / host_bw + latency)


def host_update_seconds(n_bytes, n_gpus, host_memory_bw=DEFAULT_HOST_MEMORY_BW, slots=1):
    """The host's own work, bound by its memory: stacking reads N gradients and writes one
    (N + 1); the update reads weights, gradient and ``slots`` optimizer arrays and writes
    weights and slots (3 + 2 slots): (N + 4 + 2 slots) * ``n_bytes`` / ``host_memory_bw``."""
    return (n_gpus + 4 + 2 * slots) * n_bytes / host_memory_bw


def mpi_host_seconds(n_bytes, n_ranks, link_bw, latency=DEFAULT_LATENCY,
                     memory_bw=DEFAULT_HOST_MEMORY_BW):
    """The host gather on MPI ranks, where rank 0 is itself a device: the other N - 1 ranks
    send their ``n_bytes`` gradient to rank 0 and receive ``n_bytes`` of parameters back,
    2 (N - 1) transfers, plus the stacking on rank 0 (reads N gradients, writes one:
    (N + 1) ``n_bytes`` at ``memory_bw``). Returns a dict of seconds: gather, broadcast,
    stack and total (the update is not included: the benchmark does not time one)."""
    n = int(n_ranks)
    if n < 1 or link_bw <= 0 or memory_bw <= 0:
        raise ValueError(f"need n_ranks >= 1 and positive bandwidths, got {n_ranks}, "
                         f"{link_bw}, {memory_bw}")
    one_way = (n - 1) * (n_bytes / link_bw + latency)
    stack = (n + 1) * n_bytes / memory_bw if n > 1 else 0.0
    return {"gather": one_way, "broadcast": one_way, "stack": stack,
            "total": 2 * one_way + stack}


def ring_allreduce_seconds(n_bytes, n_gpus, peer_bw, latency=DEFAULT_LATENCY):
    """Ring all-reduce: 2 (N - 1) steps, each moving ``n_bytes / N`` over every link."""
    return 2 * (n_gpus - 1) / n_gpus * n_bytes / peer_bw + 2 * (n_gpus - 1) * latency


def halving_doubling_seconds(n_bytes, n_gpus, peer_bw, latency=DEFAULT_LATENCY):
    """Rabenseifner's all-reduce: recursive halving (reduce-scatter), then recursive
    doubling (all-gather): the ring's bandwidth term in 2 log2 N steps (N a power of two;
    otherwise ceil, an approximation)."""
    return 2 * (n_gpus - 1) / n_gpus * n_bytes / peer_bw + 2 * _log2(n_gpus) * latency


def recursive_doubling_seconds(n_bytes, n_gpus, peer_bw, latency=DEFAULT_LATENCY):
    """Recursive doubling: log2 N steps; in each, every GPU swaps its whole partial sum
    with one partner (N a power of two; otherwise ceil, an approximation)."""
    return _log2(n_gpus) * (n_bytes / peer_bw + latency)


tree_allreduce_seconds = recursive_doubling_seconds  # the old name: not NCCL's trees


def double_tree_seconds(n_bytes, n_gpus, peer_bw, latency=DEFAULT_LATENCY):
    """NCCL's double binary tree: each of two trees reduces and broadcasts half the data,
    pipelined in small chunks. A device still sends about as many bytes as in the ring
    (NCCL's own tests count the same 2 (N - 1) / N for every all-reduce algorithm: it
    reaches "full bandwidth", the ring's), but a chunk crosses only about 2 log2 N links:
    the ring's bandwidth term with a latency term that grows as log N, not N."""
    if n_gpus == 1:
        return 0.0
    return 2 * (n_gpus - 1) / n_gpus * n_bytes / peer_bw + 2 * _log2(n_gpus) * latency


def sharded_seconds(n_bytes, n_gpus, peer_bw, latency=DEFAULT_LATENCY):
    """ZeRO-1: a reduce-scatter of the gradient, then an all-gather of the updated
    parameter shards, each (N - 1) / N * 4P in N - 1 ring steps: the ring's total."""
    half = (n_gpus - 1) / n_gpus * n_bytes / peer_bw + (n_gpus - 1) * latency
    return 2 * half


def latency_steps(strategy, n_gpus):
    """How many latencies one exchange pays (host 2N, ring and sharded 2(N - 1),
    halving-doubling and double tree 2 log2 N, recursive doubling log2 N)."""
    n = int(n_gpus)
    s = ALIASES.get(strategy, strategy)
    return {"host": 2 * n, "ring": 2 * (n - 1), "sharded": 2 * (n - 1),
            "halving_doubling": 2 * _log2(n), "double_tree": 2 * _log2(n) if n > 1 else 0,
            "recursive_doubling": _log2(n)}[s]


_BY_NAME = {"ring": ring_allreduce_seconds, "sharded": sharded_seconds,
            "halving_doubling": halving_doubling_seconds,
            "recursive_doubling": recursive_doubling_seconds,
            "double_tree": double_tree_seconds}


def comm_seconds(strategy, n_bytes, n_gpus, host_bw, peer_bw, latency=DEFAULT_LATENCY):
    """Link time of one exchange for ``strategy`` (one of :data:`ALGORITHMS`, or 'tree')."""
    s = ALIASES.get(strategy, strategy)
    if s == "host":
        return host_gather_seconds(n_bytes, n_gpus, host_bw, latency)
    if s not in _BY_NAME:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of "
                         f"{', '.join(ALGORITHMS + tuple(ALIASES))}")
    return _BY_NAME[s](n_bytes, n_gpus, peer_bw, latency)
