"""Predicted step time and throughput of data-parallel training on N GPUs of one kind.

A step is computed, not simulated:

    compute  = FLOPs of the largest split / (peak FLOP/s * efficiency)     (per device)
    comm     = host gather:  2 * N * P / host_bw + latency     (every device sends P bytes
                             of gradients to the host and gets P bytes of parameters back;
                             the links meet at the host, so the transfers queue there)
             | ring:         2 * (N - 1) / N * P / peer_bw + 2 * (N - 1) * latency
    step     = compute + comm        (or max(compute, comm) when they overlap)
    images/s = batch / step;  speed-up = images/s(N) / images/s(1);  efficiency = speed-up / N

FLOPs come from the model's own gradient graph (:func:`mgpu_lab.predict.graph.count_flops`);
peak FLOP/s and link bandwidths from the GPU catalogue (:mod:`mgpu_lab.predict.gpus`, each with
its source). Everything this module returns is a *prediction*, never a measurement.

The same formulas predict this machine's local devices (CPU processes) when given the
measured FLOP/s of one core and the measured shared-memory copy bandwidth; there the
devices share ``cores`` cores, so compute is multiplied by ``ceil(N / cores)``.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

from .._theano import floatX
from ..gradients import STRATEGIES
from ..models import build
from . import graph
from .gpus import get_gpu

__all__ = ["Prediction", "DEFAULT_EFFICIENCY", "DEFAULT_LATENCY",
           "gradient_bytes", "largest_split", "compute_seconds", "host_gather_seconds",
           "ring_allreduce_seconds", "comm_seconds", "step_seconds", "predict", "scaling"]

# Assumption, not a measurement: the fraction of peak fp32 FLOP/s a CNN's training step
# sustains on a GPU. Peak assumes every unit does a fused multiply-add every cycle; real
# convolution and matrix kernels reach a fraction of it, and the small elementwise ops
# between them far less. Pass ``efficiency=`` to explore other values.
DEFAULT_EFFICIENCY = 0.5

# Assumption, not a measurement: the fixed cost of one transfer (starting a copy,
# synchronising), in seconds. It matters only for small models and many GPUs.
DEFAULT_LATENCY = 10e-6


@dataclass(frozen=True)
class Prediction:
    """One predicted configuration. Times in seconds, FLOP/s and bytes as plain numbers."""

    gpu: str
    n_gpus: int
    batch_size: int
    strategy: str
    overlap: bool
    efficiency: float  # assumed fraction of peak FLOP/s reached
    latency: float  # assumed seconds per transfer
    split: int  # samples on the busiest device: ceil(batch / N)
    flops: int  # FLOPs of that device's split (one training step)
    compute_s: float
    comm_s: float
    step_s: float
    images_per_s: float
    speedup: float  # images/s over the same prediction on 1 GPU
    scaling_efficiency: float  # speedup / n_gpus

    def as_dict(self):
        return asdict(self)


# -- the formulas (plain numbers in, seconds out) ---------------------------------------
def gradient_bytes(model):
    """P: bytes of all gradients (= of all parameters) in floatX."""
    return int(model.n_params) * np.dtype(floatX).itemsize


def largest_split(batch_size, n_gpus):
    """Samples on the busiest device: the step waits for it (splits differ by <= 1)."""
    return -(-int(batch_size) // int(n_gpus))


def compute_seconds(flops, peak_flops, efficiency=DEFAULT_EFFICIENCY, waves=1):
    """``flops`` at ``efficiency * peak_flops``, ``waves`` times over (devices sharing a core)."""
    if peak_flops <= 0 or not 0 < efficiency <= 1:
        raise ValueError(f"need peak_flops > 0 and 0 < efficiency <= 1, got "
                         f"{peak_flops} and {efficiency}")
    return waves * flops / (peak_flops * efficiency)


def host_gather_seconds(n_bytes, n_gpus, host_bw, latency=DEFAULT_LATENCY):
    """Every GPU sends ``n_bytes`` to the host and receives ``n_bytes``, one after another."""
    return 2 * n_gpus * n_bytes / host_bw + latency


def ring_allreduce_seconds(n_bytes, n_gpus, peer_bw, latency=DEFAULT_LATENCY):
    """Ring all-reduce: 2 (N - 1) steps, each moving ``n_bytes / N`` over every peer link."""
    return 2 * (n_gpus - 1) / n_gpus * n_bytes / peer_bw + 2 * (n_gpus - 1) * latency


def comm_seconds(strategy, n_bytes, n_gpus, host_bw, peer_bw, latency=DEFAULT_LATENCY):
    """Communication time of one step for ``strategy`` ('host' or 'ring')."""
    if strategy == "host":
        return host_gather_seconds(n_bytes, n_gpus, host_bw, latency)
    if strategy == "ring":
        return ring_allreduce_seconds(n_bytes, n_gpus, peer_bw, latency)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def step_seconds(compute_s, comm_s, overlap=False):
    """Compute then communicate, or both at once (the slower one sets the pace)."""
    return max(compute_s, comm_s) if overlap else compute_s + comm_s


# -- the model -------------------------------------------------------------------------
def _check(n_gpus, batch_size, strategy, cores):
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, (int, np.integer)) or n_gpus < 1:
        raise ValueError(f"n_gpus must be an integer >= 1, got {n_gpus!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < n_gpus:
        raise ValueError(f"batch_size must be an integer >= n_gpus ({n_gpus}): every GPU "
                         f"needs at least one sample; got {batch_size!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if cores is not None and cores < 1:
        raise ValueError(f"cores must be None (one per GPU) or >= 1, got {cores}")


def _gpu(gpu):
    return get_gpu(gpu) if isinstance(gpu, str) else gpu


def _peer_bw(gpu):
    """GPU-to-GPU bandwidth: the peer link, or the host link for a GPU without one."""
    return gpu.host_bw if getattr(gpu, "peer_bw", None) is None else gpu.peer_bw


def _one(model, gpu, n, batch, strategy, overlap, efficiency, latency, cores):
    """(split, flops, compute_s, comm_s, step_s) of one configuration."""
    split = largest_split(batch, n)
    flops = graph.count_flops(model, split)["total"]
    waves = 1 if cores is None else math.ceil(n / cores)  # devices pinned round-robin
    compute = compute_seconds(flops, gpu.fp32_flops, efficiency, waves)
    comm = comm_seconds(strategy, gradient_bytes(model), n, gpu.host_bw, _peer_bw(gpu), latency)
    return split, flops, compute, comm, step_seconds(compute, comm, overlap)


def predict(model, gpu, n_gpus, batch_size, strategy="host", overlap=False,
            efficiency=DEFAULT_EFFICIENCY, latency=DEFAULT_LATENCY, cores=None):
    """Predicted step of ``model`` on ``n_gpus`` GPUs of kind ``gpu`` (a catalogue name or
    an object with ``name``, ``fp32_flops``, ``host_bw``, ``peer_bw``).

    ``batch_size`` is the global batch; each GPU gets ``batch_size / n_gpus`` of it.
    ``cores``: how many devices can compute at the same time (None: every GPU is its own
    chip; local CPU devices: the core count). Returns a :class:`Prediction`.
    """
    _check(n_gpus, batch_size, strategy, cores)
    model, gpu = build(model), _gpu(gpu)
    args = (strategy, overlap, efficiency, latency, cores)
    split, flops, compute, comm, step = _one(model, gpu, n_gpus, batch_size, *args)
    step_1 = step if n_gpus == 1 else _one(model, gpu, 1, batch_size, *args)[4]
    speedup = step_1 / step  # same batch: images/s ratio = inverse step-time ratio
    return Prediction(gpu.name, int(n_gpus), int(batch_size), strategy, bool(overlap),
                      float(efficiency), float(latency), split, int(flops), compute, comm, step,
                      batch_size / step, speedup, speedup / n_gpus)


def scaling(model, gpus, n_range, batch_size, strategies=STRATEGIES, **kwargs):
    """Predictions for every GPU kind x strategy x N: a list of :class:`Prediction`."""
    return [predict(model, g, n, batch_size, strategy=s, **kwargs)
            for g in gpus for s in strategies for n in n_range]
