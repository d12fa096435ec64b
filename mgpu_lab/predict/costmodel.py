"""Predicted step time and throughput of data-parallel training on N GPUs of one kind.

A step is computed, not simulated (P: bytes of gradients; alpha: latency per transfer):

    compute  = FLOPs of the largest split / (peak FLOP/s * efficiency)     (per device)
    comm     = host gather:  2 N P / host_bw + 2 N alpha      (every device sends P bytes of
                             gradients to the host and gets P bytes of parameters back; the
                             links meet at the host, so the 2N transfers queue there)
                             + (N + 4 + 2 s) P / host_memory_bw   (the host reads N gradients
                             to stack them, then updates: s optimizer slots per weight)
             | ring:         2 (N - 1) / N * P / peer_bw + 2 (N - 1) alpha   (2(N-1) steps)
             | tree:         ceil(log2 N) * (P / peer_bw + alpha)  (recursive doubling: every
                             step exchanges the whole gradient with one partner)
    step     = compute + comm; with ``overlap`` and k ``buckets``: the gradient leaves in k
               pieces while the backward pass makes them, and the step is
               forward + max(backward / k + comm, backward + comm / k)
               (only the last bucket's communication is exposed, unless the link is slower
               than the backward pass); ``overlap`` without buckets: max(compute, comm)
    images/s = batch / step;  speed-up = images/s(N) / images/s(1);  efficiency = speed-up / N

FLOPs come from the model's own gradient graph (:func:`mgpu_lab.predict.graph.count_flops`),
optionally with 3x3 stride-1 convolutions divided by a ``winograd`` factor (fast convolution
algorithms do fewer multiplications than the direct count). Peak FLOP/s (float32 or Tensor
Core ``precision``), link bandwidths and the sustained efficiency come from the GPU catalogue
(:mod:`mgpu_lab.predict.gpus`, each with its source; the efficiency is calibrated on one
published single-GPU throughput). Everything this module returns is a *prediction*.

The same formulas predict this machine's local devices (CPU processes) when given the
measured FLOP/s of one core and the measured shared-memory copy bandwidth; there the
devices share ``cores`` cores, so compute is multiplied by ``ceil(N / cores)``.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

from .._theano import floatX
from ..models import build
from . import graph
from .gpus import get_gpu
from .memory import OPTIMIZER_SLOTS

__all__ = ["Prediction", "ALGORITHMS", "DEFAULT_EFFICIENCY", "DEFAULT_LATENCY",
           "DEFAULT_HOST_MEMORY_BW", "WINOGRAD_F2", "WINOGRAD_F4",
           "gradient_bytes", "largest_split", "winograd_flops", "effective_flops",
           "efficiency_for", "compute_seconds", "host_gather_seconds", "host_update_seconds",
           "ring_allreduce_seconds", "tree_allreduce_seconds", "latency_steps", "comm_seconds",
           "step_seconds", "bucketed_step_seconds", "predict", "scaling"]

# The engines' two strategies plus the tree all-reduce, which only the model knows.
ALGORITHMS = ("host", "ring", "tree")

# Assumption, not a measurement: the fraction of peak FLOP/s a CNN's training step sustains
# on a GPU the catalogue has no calibration for (catalogue GPUs with a published single-GPU
# throughput use their own: see gpus.Calibration). Pass ``efficiency=`` to explore.
DEFAULT_EFFICIENCY = 0.5

# Assumption, not a measurement: the fixed cost of one transfer or one step of a collective
# (starting a copy, synchronising), in seconds.
DEFAULT_LATENCY = 10e-6

# Assumption: the host's memory bandwidth for stacking and updating, bytes/s: one socket's
# four DDR4-2400 channels (4 x 2400e6 x 8 B = 76.8 GB/s, the peak Intel lists for the
# Xeon E5-2698 v4 of a DGX-1). Sustained bandwidth is lower, so this term is optimistic.
DEFAULT_HOST_MEMORY_BW = 76.8e9

# Winograd's minimal filtering (Lavin & Gray 2016): F(m x m, 3 x 3) computes an m x m tile
# of outputs with (m + 2)^2 multiplications instead of 9 m^2.
WINOGRAD_F2 = 9 * 2 ** 2 / (2 + 2) ** 2  # F(2x2, 3x3): 36 / 16 = 2.25
WINOGRAD_F4 = 9 * 4 ** 2 / (4 + 2) ** 2  # F(4x4, 3x3): 144 / 36 = 4.0


@dataclass(frozen=True)
class Prediction:
    """One predicted configuration. Times in seconds, FLOP/s and bytes as plain numbers."""

    gpu: str
    n_gpus: int
    batch_size: int
    strategy: str
    overlap: bool
    efficiency: float  # fraction of the peak FLOP/s reached (calibrated or assumed)
    latency: float  # assumed seconds per transfer / collective step
    split: int  # samples on the busiest device: ceil(batch / N)
    flops: int  # FLOPs of that device's split (one training step), as counted (direct)
    compute_s: float
    comm_s: float  # all communication (and, for 'host', the host's stacking and update)
    step_s: float
    images_per_s: float
    speedup: float  # images/s over the same prediction on 1 GPU
    scaling_efficiency: float  # speedup / n_gpus
    precision: str = "fp32"
    winograd: float = 1.0
    buckets: int | None = None
    host_s: float = 0.0  # the host's stacking and update (part of comm_s)

    def as_dict(self):
        return asdict(self)


# -- the FLOP count --------------------------------------------------------------------
def gradient_bytes(model):
    """P: bytes of all gradients (= of all parameters) in floatX."""
    return int(model.n_params) * np.dtype(floatX).itemsize


def largest_split(batch_size, n_gpus):
    """Samples on the busiest device: the step waits for it (splits differ by <= 1)."""
    return -(-int(batch_size) // int(n_gpus))


def _kernel_shape(info):
    """(Cout, Cin, kh, kw) of a convolution node, whichever direction it computes."""
    return {"AbstractConv2d": lambda: info.in_shapes[1],
            "AbstractConv2d_gradWeights": lambda: info.out_shapes[0],
            "AbstractConv2d_gradInputs": lambda: info.in_shapes[0]}[info.op]()


def winograd_flops(model, batch_size):
    """FLOPs of the 3x3 stride-1 convolutions (forward, gradient w.r.t. inputs and w.r.t.
    weights) in one step on ``batch_size`` images: the part a Winograd algorithm speeds up.
    Counted once on one image (conv FLOPs are linear in the batch)."""
    cache = model.__dict__.setdefault("_winograd_flops_per_image", [])
    if not cache:
        info = graph.analyse(model, 1)
        cache.append(sum(n.flops for n in info.nodes if n.op.startswith("AbstractConv2d")
                         and tuple(n.node.op.subsample) == (1, 1)
                         and tuple(_kernel_shape(n)[-2:]) == (3, 3)))
    return cache[0] * int(batch_size)


def effective_flops(model, batch_size, winograd=1.0):
    """The step's FLOPs with 3x3 stride-1 convolutions divided by ``winograd`` (1: direct)."""
    if winograd < 1:
        raise ValueError(f"winograd must be >= 1 (1: direct convolution), got {winograd}")
    total = graph.count_flops(model, batch_size)["total"]
    if winograd == 1:
        return total
    return total - winograd_flops(model, batch_size) * (1 - 1 / winograd)


def efficiency_for(gpu, precision="fp32", winograd=1.0):
    """(efficiency, where it comes from): the catalogue's calibration of ``gpu`` at
    ``precision`` (for the same FLOP count), or :data:`DEFAULT_EFFICIENCY`."""
    cal = getattr(gpu, "calibration", {}).get(precision)
    if cal is None:
        return DEFAULT_EFFICIENCY, "assumed (no calibration for this GPU and precision)"
    return cal.efficiency(_peak(gpu, precision), winograd), cal.source


def _peak(gpu, precision):
    if hasattr(gpu, "peak"):
        return gpu.peak(precision)
    if precision != "fp32":
        raise ValueError(f"{gpu.name} has only a float32 peak (fp32_flops); got {precision!r}")
    return gpu.fp32_flops


# -- the formulas (plain numbers in, seconds out) ---------------------------------------
def compute_seconds(flops, peak_flops, efficiency=DEFAULT_EFFICIENCY, waves=1):
    """``flops`` at ``efficiency * peak_flops``, ``waves`` times over (devices sharing a core)."""
    if peak_flops <= 0 or not 0 < efficiency <= 1:
        raise ValueError(f"need peak_flops > 0 and 0 < efficiency <= 1, got "
                         f"{peak_flops} and {efficiency}")
    return waves * flops / (peak_flops * efficiency)


def host_gather_seconds(n_bytes, n_gpus, host_bw, latency=DEFAULT_LATENCY):
    """Every GPU sends ``n_bytes`` to the host and receives ``n_bytes``: 2N transfers,
    one after another, each paying ``latency``."""
    return 2 * n_gpus * (n_bytes / host_bw + latency)


def host_update_seconds(n_bytes, n_gpus, host_memory_bw=DEFAULT_HOST_MEMORY_BW, slots=1):
    """The host's own work, bound by its memory: stacking reads N gradients and writes one
    (N + 1); the update reads weights, gradient and ``slots`` optimizer arrays and writes
    weights and slots (3 + 2 slots): (N + 4 + 2 slots) * ``n_bytes`` / ``host_memory_bw``."""
    return (n_gpus + 4 + 2 * slots) * n_bytes / host_memory_bw


def ring_allreduce_seconds(n_bytes, n_gpus, peer_bw, latency=DEFAULT_LATENCY):
    """Ring all-reduce: 2 (N - 1) steps, each moving ``n_bytes / N`` over every peer link."""
    return 2 * (n_gpus - 1) / n_gpus * n_bytes / peer_bw + 2 * (n_gpus - 1) * latency


def tree_allreduce_seconds(n_bytes, n_gpus, peer_bw, latency=DEFAULT_LATENCY):
    """Recursive doubling: ceil(log2 N) steps; in each, every GPU swaps its whole partial
    sum with one partner (N not a power of two: an approximation)."""
    return latency_steps("tree", n_gpus) * (n_bytes / peer_bw + latency)


def latency_steps(strategy, n_gpus):
    """How many latencies one exchange pays: host 2N, ring 2(N - 1), tree ceil(log2 N)."""
    n = int(n_gpus)
    return {"host": 2 * n, "ring": 2 * (n - 1), "tree": math.ceil(math.log2(n))}[strategy]


def comm_seconds(strategy, n_bytes, n_gpus, host_bw, peer_bw, latency=DEFAULT_LATENCY):
    """Link time of one exchange for ``strategy`` ('host', 'ring' or 'tree')."""
    if strategy == "host":
        return host_gather_seconds(n_bytes, n_gpus, host_bw, latency)
    if strategy == "ring":
        return ring_allreduce_seconds(n_bytes, n_gpus, peer_bw, latency)
    if strategy == "tree":
        return tree_allreduce_seconds(n_bytes, n_gpus, peer_bw, latency)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(ALGORITHMS)}")


def step_seconds(compute_s, comm_s, overlap=False):
    """Compute then communicate, or both at once (the slower one sets the pace)."""
    return max(compute_s, comm_s) if overlap else compute_s + comm_s


def bucketed_step_seconds(forward_s, backward_s, bucket_comm_s, buckets, overlap=True):
    """One step whose gradient is sent in ``buckets`` pieces of ``bucket_comm_s`` each.

    Bucket i (1..k) is ready at forward + backward * i / k; the link sends one bucket at a
    time. The last bucket ends at forward + max(backward / k + k t, backward + t) (the
    slower of "the link never idles after the first bucket" and "only the last bucket is
    exposed"). Without overlap the k buckets follow the backward pass: k t."""
    k = int(buckets)
    if k < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if not overlap:
        return forward_s + backward_s + k * bucket_comm_s
    return forward_s + max(backward_s / k + k * bucket_comm_s, backward_s + bucket_comm_s)


# -- the model -------------------------------------------------------------------------
def _check(n_gpus, batch_size, strategy, cores, buckets):
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, (int, np.integer)) or n_gpus < 1:
        raise ValueError(f"n_gpus must be an integer >= 1, got {n_gpus!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < n_gpus:
        raise ValueError(f"batch_size must be an integer >= n_gpus ({n_gpus}): every GPU "
                         f"needs at least one sample; got {batch_size!r}")
    if strategy not in ALGORITHMS:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(ALGORITHMS)}")
    if cores is not None and cores < 1:
        raise ValueError(f"cores must be None (one per GPU) or >= 1, got {cores}")
    if buckets is not None and (isinstance(buckets, bool) or int(buckets) != buckets
                                or buckets < 1):
        raise ValueError(f"buckets must be None or an integer >= 1, got {buckets!r}")


def _gpu(gpu):
    return get_gpu(gpu) if isinstance(gpu, str) else gpu


def _host_side_bw(gpu):
    """The host gather's bandwidth: its transfers queue, so one at a time uses a whole
    host link (for a K80, the board's link, twice a busy GPU's share)."""
    return gpu.host_bw * getattr(gpu, "gpus_per_board", 1)


def _peer_bw(gpu):
    """GPU-to-GPU bandwidth: the peer link, or the host link for a GPU without one."""
    return gpu.host_bw if getattr(gpu, "peer_bw", None) is None else gpu.peer_bw


def _one(model, gpu, n, batch, strategy, overlap, efficiency, latency, cores, o):
    """(split, flops, compute_s, comm_s, host_s, step_s) of one configuration; ``o``: the
    keyword options (precision, winograd, buckets, host_memory_bw, optimizer)."""
    split = largest_split(batch, n)
    counts = graph.count_flops(model, split)
    flops = effective_flops(model, split, o["winograd"])
    waves = 1 if cores is None else math.ceil(n / cores)  # devices pinned round-robin
    compute = compute_seconds(flops, _peak(gpu, o["precision"]), efficiency, waves)
    k = o["buckets"] or 1
    P = gradient_bytes(model)
    bucket = comm_seconds(strategy, P / k, n, _host_side_bw(gpu), _peer_bw(gpu), latency)
    host = host_update_seconds(P, n, o["host_memory_bw"], OPTIMIZER_SLOTS[o["optimizer"]]) \
        if strategy == "host" else 0.0
    if not overlap or o["buckets"] is None:  # one after the other, or the ideal overlap
        step = step_seconds(compute, k * bucket, overlap) + host
    else:  # buckets leave during the backward pass
        fwd = compute * counts["forward"] / counts["total"]
        step = bucketed_step_seconds(fwd, compute - fwd, bucket, k, overlap) + host
    return split, counts["total"], compute, k * bucket + host, host, step


def predict(model, gpu, n_gpus, batch_size, strategy="host", overlap=False, efficiency=None,
            latency=DEFAULT_LATENCY, cores=None, *, precision="fp32", winograd=1.0,
            buckets=None, host_memory_bw=DEFAULT_HOST_MEMORY_BW, optimizer="momentum"):
    """Predicted step of ``model`` on ``n_gpus`` GPUs of kind ``gpu`` (a catalogue name or
    an object with ``name``, ``fp32_flops``, ``host_bw``, ``peer_bw``).

    ``batch_size`` is the global batch; each GPU gets ``batch_size / n_gpus`` of it.
    ``strategy``: 'host', 'ring' or 'tree'. ``efficiency``: None takes the catalogue's
    calibration for ``gpu`` and ``precision`` ('fp32', or a Tensor Core 'tf32', 'bf16',
    'fp16'), else :data:`DEFAULT_EFFICIENCY`. ``winograd``: divide 3x3 stride-1 conv FLOPs
    by it (1: the direct count). ``buckets``: send the gradient in that many pieces
    (None: one; with ``overlap`` and None, the ideal max(compute, comm)). ``optimizer``:
    the host's update ('host' strategy). ``cores``: how many devices can compute at the
    same time (None: every GPU is its own chip; local CPU devices: the core count).
    Returns a :class:`Prediction`.
    """
    _check(n_gpus, batch_size, strategy, cores, buckets)
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_SLOTS)}")
    model, gpu = build(model), _gpu(gpu)
    if efficiency is None:
        efficiency = efficiency_for(gpu, precision, winograd)[0]
    opts = dict(precision=precision, winograd=float(winograd), buckets=buckets,
                host_memory_bw=host_memory_bw, optimizer=optimizer)
    args = (strategy, overlap, efficiency, latency, cores, opts)
    split, flops, compute, comm, host, step = _one(model, gpu, n_gpus, batch_size, *args)
    step_1 = step if n_gpus == 1 else _one(model, gpu, 1, batch_size, *args)[5]
    speedup = step_1 / step  # same batch: images/s ratio = inverse step-time ratio
    return Prediction(gpu.name, int(n_gpus), int(batch_size), strategy, bool(overlap),
                      float(efficiency), float(latency), split, int(flops), compute, comm, step,
                      batch_size / step, speedup, speedup / n_gpus, precision, float(winograd),
                      None if buckets is None else int(buckets), host)


def scaling(model, gpus, n_range, batch_size, strategies=("host", "ring"), **kwargs):
    """Predictions for every GPU kind x strategy x N: a list of :class:`Prediction`."""
    return [predict(model, g, n, batch_size, strategy=s, **kwargs)
            for g in gpus for s in strategies for n in n_range]
