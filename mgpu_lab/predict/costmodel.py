"""Predicted step time and throughput of data-parallel training on N GPUs of one kind.

A step is computed, not simulated (P parameters, so 4P bytes of float32 gradient; alpha:
latency per transfer or collective step; F and B the forward and backward compute):

    compute  = a roofline per kernel of the largest split's step (per device): each
               convolution, matrix product, reduction and fused elementwise chain, forward
               and backward (mgpu_lab.predict.graph.kernels), takes
               max(FLOPs_k / (peak FLOP/s * efficiency),
                   bytes_k / (memory_bw * memory_efficiency)),
               bytes_k its activations, weights and gradients read and written at the
               precision's bytes per number; compute is their sum. (A GPU without
               ``memory_bw``, or ``roofline=False``: FLOPs / (peak FLOP/s * efficiency).)
    comm     = one exchange of the 4P-byte gradient (mgpu_lab.predict.algorithms):
               host gather 2 N (4P / host_bw + alpha), its transfers queued one after
               another at the host (a pessimistic bound), + the host's stacking and update
               (N + 4 + 2 s) 4P / host_memory_bw (s optimizer slots); ring and sharded
               2 (N - 1) / N * 4P / peer_bw + 2 (N - 1) alpha (peer_bw: all of a GPU's
               links, as several rings reach them at best); halving-doubling, recursive
               doubling, NCCL's double binary tree: see that module
    step     = compute + comm without overlap. With ``overlap`` the gradient leaves while
               the backward pass makes it: in k ``buckets``,
               F + max(B / k + k t, B + t) (t: one bucket's exchange), and with no buckets
               given, the ideal F + max(B, comm). The host gather's update needs every
               gradient first, so its return trip (N transfers of 4P) can overlap at most
               the *next* forward pass: it adds max(0, return - F), and the update adds all
               of its time.
    images/s = batch / step;  speed-up = images/s(N) / images/s(1) (strong scaling: the
               same global batch; weak scaling, ``batch_per_gpu=b``: 1 GPU with b)

FLOPs and bytes come from the model's own gradient graph (:func:`mgpu_lab.predict.graph.kernels`),
optionally with 3x3 stride-1 convolutions divided by a ``winograd`` factor (fast convolution
algorithms do fewer multiplications than the direct count). Peak FLOP/s, memory and link
bandwidths come from the GPU catalogue (:mod:`mgpu_lab.predict.gpus`). Two efficiencies
scale the two roofs. The memory efficiency is one number for every GPU
(:data:`MEMORY_EFFICIENCY`, see :mod:`mgpu_lab.predict.gpus` for how it is fixed); the
compute efficiency is *calibrated* (solved so that the roofline gives one cited, published
single-GPU throughput of that GPU at that precision back: :func:`calibrated_efficiency`)
or *uncalibrated* (assumed: a calibrated relative's compute efficiency, with the GPU's own
peak and bandwidth, :func:`borrowed_calibration`, else :data:`DEFAULT_EFFICIENCY`); every
:class:`Prediction` says which in ``calibrated`` and ``efficiency_source``, and
``Prediction.label`` says it in words. "fp32" on Ampere and later is charged at the TF32
peak, as frameworks run it (:meth:`mgpu_lab.predict.gpus.GPU.framework_precision`).
Everything this module returns is a *prediction*.

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
from .algorithms import (ALGORITHMS as _ALGORITHMS, ALIASES, DEFAULT_HOST_MEMORY_BW,
                         DEFAULT_LATENCY, comm_seconds, double_tree_seconds,
                         halving_doubling_seconds, host_gather_seconds, host_update_seconds,
                         latency_steps, mpi_host_seconds, recursive_doubling_seconds,
                         ring_allreduce_seconds, sharded_seconds, tree_allreduce_seconds)
from .gpus import MEMORY_EFFICIENCY, ROOFLINE_EFFICIENCY, get_gpu
from .memory import OPTIMIZER_SLOTS
from .precision import check_precision, value_bytes

__all__ = ["Prediction", "ALGORITHMS", "DEFAULT_EFFICIENCY", "DEFAULT_LATENCY",
           "DEFAULT_HOST_MEMORY_BW", "WINOGRAD_F2", "WINOGRAD_F4", "DEFAULT_WINOGRAD",
           "gradient_bytes", "largest_split", "winograd_flops", "effective_flops",
           "efficiency_for", "calibration_for", "borrowed_calibration", "SAME_UNITS",
           "uncalibrated_label", "compute_seconds", "MEMORY_EFFICIENCY", "float_bytes",
           "roofline_seconds", "step_compute", "calibrated_efficiency", "calibration_step",
           "kernel_intensities", "ridge_points",
           "host_gather_seconds", "host_update_seconds", "mpi_host_seconds",
           "ring_allreduce_seconds", "halving_doubling_seconds", "recursive_doubling_seconds",
           "tree_allreduce_seconds", "double_tree_seconds", "sharded_seconds",
           "latency_steps", "comm_seconds", "step_seconds", "bucketed_step_seconds",
           "predict", "scaling"]

# Every algorithm the model knows, and 'tree', the old name of recursive doubling.
ALGORITHMS = _ALGORITHMS + tuple(ALIASES)

# Assumption, not a measurement: the fraction of peak FLOP/s a CNN's training step sustains
# on a GPU and precision with no calibration and no calibrated relative to borrow one from
# (:func:`borrowed_calibration`; no catalogue GPU is left without one). Every prediction
# that uses an assumed efficiency is labelled "uncalibrated (assumed efficiency ..)". Pass
# ``efficiency=`` to explore.
DEFAULT_EFFICIENCY = 0.5

# Winograd's minimal filtering (Lavin & Gray 2016): F(m x m, 3 x 3) computes an m x m tile
# of outputs with (m + 2)^2 multiplications instead of 9 m^2.
WINOGRAD_F2 = 9 * 2 ** 2 / (2 + 2) ** 2  # F(2x2, 3x3): 36 / 16 = 2.25
WINOGRAD_F4 = 9 * 4 ** 2 / (4 + 2) ** 2  # F(4x4, 3x3): 144 / 36 = 4.0

# The FLOP count predictions use unless told otherwise: chosen in sample, on TensorFlow's
# VGG-16 and ResNet-152 figures (the only published networks besides ResNet-50), by
# mgpu_lab.predict.validation.winograd_held_out. The held-out sources have only ResNet-50,
# whose calibration absorbs the factor, so none of them can tell the counts apart: the
# choice is not tested out of sample (chapter 11 shows the tables; a test checks that this
# is still the choice with the smaller mean error in that table).
DEFAULT_WINOGRAD = WINOGRAD_F4


@dataclass(frozen=True)
class Prediction:
    """One predicted configuration. Times in seconds, FLOP/s and bytes as plain numbers."""

    gpu: str
    n_gpus: int
    batch_size: int  # global batch
    strategy: str
    overlap: bool
    efficiency: float  # compute efficiency: fraction of the peak FLOP/s the arithmetic-bound
    # kernels reach (calibrated or assumed); the whole step's fraction: sustained_efficiency
    latency: float  # assumed seconds per transfer / collective step
    split: int  # samples on the busiest device: ceil(batch / N)
    flops: int  # FLOPs of that device's split (one training step), as counted (direct)
    compute_s: float
    comm_s: float  # all communication (and, for 'host', the host's stacking and update)
    step_s: float
    images_per_s: float
    speedup: float  # images/s over the same prediction on 1 GPU (see ``scaling``)
    scaling_efficiency: float  # speedup / n_gpus
    precision: str = "fp32"  # as asked for
    winograd: float = 1.0
    buckets: int | None = None
    host_s: float = 0.0  # the host's stacking and update (part of comm_s)
    calibrated: bool = False  # efficiency from a published single-GPU figure?
    efficiency_source: str = ""  # that figure's source, or why it is assumed
    peak_precision: str = "fp32"  # the peak charged (fp32 on Ampere+ runs as tf32)
    scaling: str = "strong"  # 'strong': 1 GPU with the same batch; 'weak': with batch_per_gpu
    batch_per_gpu: int | None = None
    assumed_like: str = ""  # uncalibrated: the calibrated GPU whose efficiency it borrows
    assumed_precision: str = ""  # ... and at which precision
    wire_precision: str = "fp32"  # the gradients' precision in the exchange
    recompute: bool = False  # activation recomputation: one more forward pass in compute_s
    memory_efficiency: float | None = None  # fraction of memory_bw reached; None: no roofline
    memory_bound_s: float = 0.0  # of compute_s, the kernels bound by memory bandwidth
    sustained_efficiency: float = 0.0  # the split's FLOPs / (compute_s * peak): whole step

    @property
    def label(self):
        """'calibrated (source)' or 'uncalibrated (assumed efficiency 11%, ...)'."""
        if self.calibrated:
            return f"calibrated ({self.efficiency_source})"
        return uncalibrated_label(self.efficiency, self.assumed_like, self.assumed_precision)

    def as_dict(self):
        return {**asdict(self), "label": self.label}


def uncalibrated_label(efficiency, like="", precision=""):
    """'uncalibrated (assumed efficiency 50%)', naming the GPU it is borrowed from if any."""
    borrowed = f", the {like}'s calibrated {precision} figure" if like else ""
    return f"uncalibrated (assumed efficiency {efficiency:.0%}{borrowed})"


# -- the FLOP count --------------------------------------------------------------------
def gradient_bytes(model, precision="fp32"):
    """Bytes of all gradients (one per parameter): 4P in floatX (float32); 2P for a
    16-bit ``precision`` ("fp16", "bf16"; :func:`mgpu_lab.predict.precision.value_bytes`)."""
    if precision == "fp32":
        return int(model.n_params) * np.dtype(floatX).itemsize
    return int(model.n_params) * value_bytes(precision)


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


def calibration_for(gpu, precision="fp32", winograd=None, roofline=True):
    """How ``gpu`` at ``precision`` is predicted: a dict with ``efficiency`` (the compute
    efficiency), ``memory_efficiency`` (:data:`MEMORY_EFFICIENCY`; None where the model is
    FLOPs-only: ``roofline=False``, or a GPU without ``memory_bw``), ``calibrated`` (bool),
    ``source`` (the published figure, or why it is assumed), ``peak_precision`` (the peak
    charged: "fp32" on Ampere and later runs as "tf32") and ``label`` ('calibrated (...)'
    or 'uncalibrated (assumed efficiency 11%, ...)'), ``assumed_like`` and
    ``assumed_precision`` (the calibrated GPU and precision an uncalibrated one borrows its
    compute efficiency from, :func:`borrowed_calibration`; "" when it borrows none and
    :data:`DEFAULT_EFFICIENCY` is assumed). With ``roofline=False`` the efficiency is the
    FLOPs-only one (:meth:`mgpu_lab.predict.gpus.Calibration.efficiency`), as before the
    roofline."""
    gpu = _gpu(gpu)
    winograd = DEFAULT_WINOGRAD if winograd is None else winograd
    run, why = (gpu.framework_precision(precision) if hasattr(gpu, "framework_precision")
                else (precision, "as requested"))
    cal = getattr(gpu, "calibration", {}).get(run)
    roof = _has_roofline(gpu, roofline)
    like, like_precision = "", ""
    if cal is None:
        lent = borrowed_calibration(gpu, run)
        if lent:
            lender, like_precision, lent_cal = lent
            like = lender.name
            eff = _efficiency(lender, like_precision, lent_cal, winograd, roof)
        else:
            eff = DEFAULT_EFFICIENCY
        own = ", with its own peak and memory bandwidth" if roof else ""
        source = (f"no published single-GPU figure for {gpu.name} at {run}; assumed"
                  + (f" equal to the {like}'s at {like_precision}{own} ({lent_cal.source})"
                     if like else ""))
        label = uncalibrated_label(eff, like, like_precision)
    else:
        eff, source = _efficiency(gpu, run, cal, winograd, roof), cal.source
        label = f"calibrated ({source})"
    if run != precision:
        source, label = f"{source}; {why}", f"{label}; {why}"
    return {"efficiency": eff, "memory_efficiency": MEMORY_EFFICIENCY if roof else None,
            "calibrated": cal is not None, "source": source, "peak_precision": run,
            "label": label, "assumed_like": like, "assumed_precision": like_precision}


def _has_roofline(gpu, roofline=True):
    """Whether ``gpu`` is predicted with the roofline: it has a memory bandwidth."""
    return bool(roofline) and getattr(gpu, "memory_bw", None) is not None


def _efficiency(owner, precision, cal, winograd, roofline):
    """The compute efficiency ``cal`` gives: solved on the GPU that published the figure
    (for a carried figure, the GPU it was carried from) with the roofline, or FLOPs-only."""
    if cal.carried_from:
        owner = get_gpu(cal.carried_from)
    if roofline and _has_roofline(owner):
        return calibrated_efficiency(owner, precision, cal, winograd)
    return cal.efficiency(_peak(owner, precision), winograd)


# BF16 runs on the same Tensor Cores at the same dense peak as FP16 (the A100 and H100
# datasheets): without a figure of its own, BF16 borrows the FP16 efficiency.
SAME_UNITS = {"bf16": "fp16"}


def borrowed_calibration(gpu, precision):
    """(lender GPU, its precision, its Calibration) whose efficiency an uncalibrated ``gpu``
    at ``precision`` assumes: the same GPU's FP16 for BF16, else the ``GPU.assume_like``
    sibling's at the same precision (or its FP16 for BF16); None if none is calibrated."""
    like = getattr(gpu, "assume_like", None)
    own = [(gpu, SAME_UNITS[precision])] if precision in SAME_UNITS else []
    sibling = [(_gpu(like), p) for p in [precision] + [q for _, q in own]] if like else []
    for lender, p in own + sibling:
        cal = getattr(lender, "calibration", {}).get(p)
        if cal is not None:
            return lender, p, cal
    return None


def efficiency_for(gpu, precision="fp32", winograd=1.0):
    """(efficiency, label) in the FLOPs-only view of chapter 11's calibration: the
    fraction of the peak the published single-GPU step sustains, images/s x FLOPs per
    image / peak (:func:`calibration_for` with ``roofline=False``), for the direct FLOP
    count unless ``winograd`` says otherwise (None: :data:`DEFAULT_WINOGRAD`). The
    roofline's compute efficiency is :func:`calibration_for`'s ``efficiency``."""
    c = calibration_for(gpu, precision, winograd, roofline=False)
    return c["efficiency"], c["label"]


def _peak(gpu, precision):
    if hasattr(gpu, "peak"):
        return gpu.peak(precision)
    if precision != "fp32":
        raise ValueError(f"{gpu.name} has only a float32 peak (fp32_flops); got {precision!r}")
    return gpu.fp32_flops


# -- the formulas (plain numbers in, seconds out; the exchanges: predict/algorithms.py) --
def compute_seconds(flops, peak_flops, efficiency=DEFAULT_EFFICIENCY, waves=1):
    """``flops`` at ``efficiency * peak_flops``, ``waves`` times over (devices sharing a core)."""
    if peak_flops <= 0 or not 0 < efficiency <= 1:
        raise ValueError(f"need peak_flops > 0 and 0 < efficiency <= 1, got "
                         f"{peak_flops} and {efficiency}")
    return waves * flops / (peak_flops * efficiency)


def float_bytes(precision="fp32"):
    """Bytes of one activation, weight or gradient a kernel reads or writes at
    ``precision``: 2 in mixed precision ("fp16", "bf16"), else 4 (TF32 stores float32)."""
    return value_bytes(precision)


def roofline_seconds(flops, nbytes, peak_flops, memory_bw, efficiency=DEFAULT_EFFICIENCY,
                     memory_efficiency=MEMORY_EFFICIENCY):
    """Seconds of kernels with ``flops`` and ``nbytes`` each (numbers or arrays of one
    length): each takes max(flops / (peak_flops * efficiency), nbytes / (memory_bw *
    memory_efficiency)), the slower of its arithmetic and its memory traffic; the sum."""
    if peak_flops <= 0 or memory_bw <= 0:
        raise ValueError(f"need peak_flops > 0 and memory_bw > 0, got {peak_flops} and {memory_bw}")
    for name, e in (("efficiency", efficiency), ("memory_efficiency", memory_efficiency)):
        if not 0 < e <= 1:
            raise ValueError(f"need 0 < {name} <= 1, got {e}")
    compute = np.asarray(flops, dtype=float) / (peak_flops * efficiency)
    memory = np.asarray(nbytes, dtype=float) / (memory_bw * memory_efficiency)
    return float(np.sum(np.maximum(compute, memory)))


def _kernel_arrays(model, batch_size, winograd):
    """(FLOPs with 3x3 stride-1 convolutions / winograd, numbers moved, forward?) per kernel."""
    ks = graph.kernels(model, batch_size)
    flops = np.array([k.flops - k.fast_conv_flops * (1 - 1 / winograd) for k in ks])
    elements = np.array([k.elements for k in ks], dtype=float)
    return flops, elements, np.array([k.phase == "forward" for k in ks])


def step_compute(model, batch_size, gpu, precision="fp32", efficiency=DEFAULT_EFFICIENCY,
                 memory_efficiency=MEMORY_EFFICIENCY, winograd=1.0):
    """One device's compute for a step on ``batch_size`` samples at ``precision`` (the peak
    charged, e.g. "tf32"), kernel by kernel (:func:`roofline_seconds`): a dict with
    ``compute_s``, ``forward_s``, ``memory_bound_s`` (the kernels whose memory term is the
    larger), ``forward_memory_bound_s`` and ``flops`` (after the Winograd division). A GPU
    without ``memory_bw``, or ``memory_efficiency=None``: FLOPs-only."""
    flops, elements, fwd = _kernel_arrays(model, batch_size, winograd)
    peak = _peak(gpu, precision)
    compute = flops / (peak * efficiency)
    if memory_efficiency is None or getattr(gpu, "memory_bw", None) is None:
        memory = np.zeros_like(compute)
    else:
        roofline_seconds(1, 1, peak, gpu.memory_bw, efficiency, memory_efficiency)  # checks
        memory = elements * float_bytes(precision) / (gpu.memory_bw * memory_efficiency)
    time, bound = np.maximum(compute, memory), memory > compute
    return {"compute_s": float(time.sum()), "forward_s": float(time[fwd].sum()),
            "memory_bound_s": float(time[bound].sum()),
            "forward_memory_bound_s": float(time[bound & fwd].sum()),
            "flops": float(flops.sum())}


def _kind(ops):
    first = ops[0]
    return ("convolution" if first.startswith("AbstractConv2d") else
            "matrix product" if first in ("Dot", "Dot22", "Gemm", "Gemv", "Dot22Scalar") else
            "elementwise" if first == "Elemwise" else "reduction, pool, softmax")


def kernel_intensities(model, batch_size, precision="fp32", winograd=None):
    """One dict per kernel of a step on ``batch_size`` samples: ``label``, ``kind``
    (convolution, matrix product, elementwise, or reduction, pool, softmax), ``phase``,
    ``flops`` (as the model charges them: 3x3 stride-1 convolutions / ``winograd``, None:
    :data:`DEFAULT_WINOGRAD`), ``bytes`` (at ``precision``) and ``intensity``, FLOPs per
    byte. A kernel is bound by memory on a GPU when its intensity is below the GPU's ridge
    (:func:`ridge_points`)."""
    w = float(DEFAULT_WINOGRAD if winograd is None else winograd)
    fb = float_bytes(precision)
    out = []
    for k in graph.kernels(build(model), batch_size):
        flops = k.flops - k.fast_conv_flops * (1 - 1 / w)
        out.append({"label": k.label, "kind": _kind(k.ops), "phase": k.phase, "flops": flops,
                    "bytes": k.nbytes(fb), "intensity": flops / k.nbytes(fb) if k.elements else 0.0})
    return out


def ridge_points(gpus, precision="fp32", winograd=None):
    """One dict per GPU (catalogue names or objects) at ``precision`` as frameworks run it:
    ``gpu``, ``runs_as``, ``peak``, ``memory_bw``, ``ridge`` (the datasheet's, peak /
    bandwidth, FLOPs per byte), ``model_ridge`` (as the cost model charges it: peak x
    efficiency / (bandwidth x memory efficiency)), ``efficiency``, ``memory_efficiency``
    and ``label`` (calibrated or assumed). A GPU without a peak at ``precision`` is left out."""
    out = []
    for g in map(_gpu, gpus):
        if precision != "fp32" and precision not in getattr(g, "tensor_flops", {}):
            continue
        c = calibration_for(g, precision, winograd)
        peak = _peak(g, c["peak_precision"])
        out.append({"gpu": g.name, "runs_as": c["peak_precision"], "peak": peak,
                    "memory_bw": g.memory_bw, "ridge": peak / g.memory_bw,
                    "model_ridge": peak * c["efficiency"] / (g.memory_bw * c["memory_efficiency"]),
                    "efficiency": c["efficiency"], "memory_efficiency": c["memory_efficiency"],
                    "calibrated": c["calibrated"], "label": c["label"]})
    return out


# The network every calibration figure is of: ResNet-50 at 224 px, 1000 classes.
_CALIBRATION_NET = []


def calibration_step(batch_size):
    """The kernels of one ResNet-50 training step at ``batch_size``: the step every
    published calibration figure is of (built once; a few seconds)."""
    if not _CALIBRATION_NET:
        from ..models import resnet_like
        _CALIBRATION_NET.append(resnet_like(50))
    return graph.kernels(_CALIBRATION_NET[0], batch_size)


_SOLVED = {}


def calibrated_efficiency(gpu, precision, cal=None, winograd=None, memory_efficiency=None):
    """The compute efficiency at which the roofline gives ``cal``'s published throughput
    (default: ``gpu``'s calibration at ``precision``) back: ResNet-50's step at the
    figure's batch, with ``gpu``'s peak at ``precision`` and its memory bandwidth at
    ``memory_efficiency`` (None: :data:`MEMORY_EFFICIENCY`). Precomputed for the default
    count and memory efficiency (``gpus.ROOFLINE_EFFICIENCY``, which a test recomputes);
    otherwise solved by bisection and remembered."""
    gpu = _gpu(gpu)
    cal = gpu.calibration[precision] if cal is None else cal
    w = float(DEFAULT_WINOGRAD if winograd is None else winograd)
    mem = MEMORY_EFFICIENCY if memory_efficiency is None else memory_efficiency
    key = (gpu.name, precision, cal.images_per_s, cal.batch)
    if (w, mem) == (DEFAULT_WINOGRAD, MEMORY_EFFICIENCY) and key in ROOFLINE_EFFICIENCY:
        return ROOFLINE_EFFICIENCY[key]
    key += (_peak(gpu, precision), gpu.memory_bw, w, mem)
    if key not in _SOLVED:
        _SOLVED[key] = _solve_efficiency(gpu, precision, cal, w, mem)
    return _SOLVED[key]


def _solve_efficiency(gpu, precision, cal, winograd, memory_efficiency):
    step = _CalibrationStep(gpu, precision, cal.batch, winograd, memory_efficiency)
    target = cal.batch / cal.images_per_s  # seconds per published step
    if step(1.0) > target:
        raise ValueError(f"{cal.images_per_s} images/s on {gpu.name} at {precision} is faster "
                         f"than the roofline allows at memory efficiency {memory_efficiency} "
                         f"even at the full peak: raise memory_efficiency")
    lo, hi = 1e-6, 1.0  # the step time falls as the efficiency rises
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if step(mid) > target else (lo, mid)
    return math.sqrt(lo * hi)


class _CalibrationStep:
    """ResNet-50's step time on ``gpu`` as a function of the compute efficiency."""

    def __init__(self, gpu, precision, batch, winograd, memory_efficiency):
        ks = calibration_step(batch)
        self.flops = np.array([k.flops - k.fast_conv_flops * (1 - 1 / winograd) for k in ks])
        self.memory = (np.array([k.elements for k in ks], dtype=float) * float_bytes(precision)
                       / (gpu.memory_bw * memory_efficiency))
        self.peak = _peak(gpu, precision)

    def __call__(self, efficiency):
        return float(np.sum(np.maximum(self.flops / (self.peak * efficiency), self.memory)))


def step_seconds(compute_s, comm_s, overlap=False, forward_s=0.0):
    """Compute then communicate; with ``overlap`` the exchange runs under the backward
    pass (compute - ``forward_s``): forward + max(backward, comm)."""
    if not overlap:
        return compute_s + comm_s
    return forward_s + max(compute_s - forward_s, comm_s)


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


def _batches(n_gpus, batch_size, batch_per_gpu):
    """(global batch, 1-GPU baseline batch, 'strong' | 'weak'): exactly one of the two."""
    if (batch_size is None) == (batch_per_gpu is None):
        raise ValueError("give exactly one of batch_size (the global batch: strong scaling) "
                         f"and batch_per_gpu (weak scaling); got {batch_size!r} and "
                         f"{batch_per_gpu!r}")
    if batch_per_gpu is None:
        return batch_size, batch_size, "strong"
    if isinstance(batch_per_gpu, bool) or not isinstance(batch_per_gpu, (int, np.integer)) \
            or batch_per_gpu < 1:
        raise ValueError(f"batch_per_gpu must be an integer >= 1, got {batch_per_gpu!r}")
    return int(n_gpus) * int(batch_per_gpu), int(batch_per_gpu), "weak"


def _gpu(gpu):
    return get_gpu(gpu) if isinstance(gpu, str) else gpu


def _host_side_bw(gpu):
    """The host gather's bandwidth per transfer: its transfers queue at the host, one at a
    time (the model's pessimistic bound), so each has the GPU's whole host link,
    ``host_bw`` (for a K80, the board's whole x16 link: in the queue the board's other GPU
    is not sending). Chapter 10's figure and table use the same figure."""
    return gpu.host_bw


def _peer_bw(gpu):
    """GPU-to-GPU bandwidth: the peer links, or the host link for a GPU without them.
    ``peer_bw`` is all of a GPU's links at once, what several rings over a whole server
    reach at best (NCCL's channels); one ring through fewer GPUs may get less
    (:meth:`mgpu_lab.predict.gpus.GPU.ring_bw`)."""
    return gpu.host_bw if getattr(gpu, "peer_bw", None) is None else gpu.peer_bw


def _one(model, gpu, n, batch, strategy, overlap, efficiency, latency, cores, o):
    """(split, flops, compute_s, comm_s, host_s, step_s, parts) of one configuration; ``o``:
    the keyword options (peak_precision, winograd, buckets, host_memory_bw, optimizer,
    memory_efficiency, ...); ``parts``: :func:`step_compute`'s dict, waves included."""
    split = largest_split(batch, n)
    counts = graph.count_flops(model, split)
    waves = 1 if cores is None else math.ceil(n / cores)  # devices pinned round-robin
    if o["memory_efficiency"] is None:  # FLOPs-only: no kernel table needed
        compute = compute_seconds(effective_flops(model, split, o["winograd"]),
                                  _peak(gpu, o["peak_precision"]), efficiency, waves)
        fwd = compute * counts["forward"] / counts["total"]
        parts = {"memory_bound_s": 0.0, "forward_memory_bound_s": 0.0,
                 "flops": effective_flops(model, split, o["winograd"])}
    else:
        parts = step_compute(model, split, gpu, o["peak_precision"], efficiency,
                             o["memory_efficiency"], o["winograd"])
        compute, fwd = waves * parts["compute_s"], waves * parts["forward_s"]
    bound = waves * (parts["memory_bound_s"]
                     + (parts["forward_memory_bound_s"] if o["recompute"] else 0.0))
    parts = {**parts, "memory_bound_s": bound}
    compute += fwd if o["recompute"] else 0.0  # recomputation: about one more forward pass
    k, P4 = o["buckets"] or 1, gradient_bytes(model, o["wire_precision"])
    if strategy == "host":  # k buckets up, the update, the parameters back in one piece
        bucket = host_gather_seconds(P4 / k, n, _host_side_bw(gpu), latency) / 2
        back = host_gather_seconds(P4, n, _host_side_bw(gpu), latency) / 2
        host = host_update_seconds(gradient_bytes(model), n, o["host_memory_bw"],  # float32
                                   OPTIMIZER_SLOTS[o["optimizer"]])
    else:
        bucket = comm_seconds(strategy, P4 / k, n, _host_side_bw(gpu), _peer_bw(gpu), latency)
        back = host = 0.0
    if not overlap:
        step = compute + k * bucket + host + back
    else:  # the return trip can hide under the next forward pass, no more
        up = step_seconds(compute, k * bucket, True, fwd) if o["buckets"] is None else \
            bucketed_step_seconds(fwd, compute - fwd, bucket, k, True)
        step = up + host + max(0.0, back - fwd)
    return split, counts["total"], compute, k * bucket + back + host, host, step, parts


def predict(model, gpu, n_gpus, batch_size=None, strategy="host", overlap=False,
            efficiency=None, latency=DEFAULT_LATENCY, cores=None, *, batch_per_gpu=None,
            precision="fp32", winograd=None, buckets=None,
            host_memory_bw=DEFAULT_HOST_MEMORY_BW, optimizer="momentum",
            wire_precision="fp32", recompute=False, memory_efficiency=None, roofline=True):
    """Predicted step of ``model`` on ``n_gpus`` GPUs of kind ``gpu`` (a catalogue name or
    an object with ``name``, ``fp32_flops``, ``host_bw``, ``peer_bw``).

    The batch: ``batch_size`` (global, cut into N splits; speed-up against 1 GPU with the
    same batch: strong scaling) or ``batch_per_gpu=b`` (global N b; speed-up against 1
    GPU with b: weak scaling, as every published source runs). ``strategy``: one of
    :data:`ALGORITHMS`. ``efficiency``: None takes :func:`calibration_for` (calibrated, or
    assumed and labelled uncalibrated). ``precision``: 'fp32' (as the
    framework runs it: TF32 on Ampere and later), 'tf32', 'bf16', 'fp16'. ``winograd``:
    divide 3x3 stride-1 conv FLOPs by it (None: :data:`DEFAULT_WINOGRAD`; 1: the direct
    count). ``buckets``: send the gradient in that many pieces. ``optimizer``: the host's
    update ('host' strategy). ``cores``: how many devices compute at once (None: every
    GPU its own chip; local CPU devices: the core count). ``wire_precision``: the
    gradients' precision in the exchange ("fp32", the default, 4P bytes; "fp16" or "bf16",
    2P: every transfer's bytes halve; the host's update stays float32). ``recompute``:
    activation recomputation (:mod:`mgpu_lab.predict.memory`), charged as one more forward
    pass in the compute. ``memory_efficiency``: the fraction of the GPU's memory
    bandwidth its memory-bound kernels reach (None: :data:`MEMORY_EFFICIENCY`; a
    calibrated compute efficiency is solved again for another value). ``roofline=False``:
    the FLOPs-only model (compute = FLOPs / (peak x efficiency), FLOPs-only calibration),
    as before the roofline. Returns a :class:`Prediction`.
    """
    batch_size, batch_1, mode = _batches(n_gpus, batch_size, batch_per_gpu)
    _check(n_gpus, batch_size, strategy, cores, buckets)
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_SLOTS)}")
    model, gpu = build(model), _gpu(gpu)
    winograd = float(DEFAULT_WINOGRAD if winograd is None else winograd)
    cal = calibration_for(gpu, precision, winograd, roofline)
    mem = cal["memory_efficiency"]
    if mem is not None and memory_efficiency is not None:
        mem = float(memory_efficiency)
        if efficiency is None:  # the calibration solved again at that memory efficiency
            cal = {**cal, "efficiency": _memory_recalibrated(gpu, precision, winograd, mem)}
    borrowed = (cal["assumed_like"], cal["assumed_precision"]) if efficiency is None else ("", "")
    calibrated = cal["calibrated"] and efficiency is None
    source = cal["source"] if efficiency is None else "given by the caller (assumed)"
    efficiency = cal["efficiency"] if efficiency is None else efficiency
    strategy = ALIASES.get(strategy, strategy)
    opts = dict(peak_precision=cal["peak_precision"], winograd=winograd, buckets=buckets,
                host_memory_bw=host_memory_bw, optimizer=optimizer,
                wire_precision=check_precision(wire_precision), recompute=bool(recompute),
                memory_efficiency=mem)
    args = (strategy, overlap, efficiency, latency, cores, opts)
    split, flops, compute, comm, host, step, parts = _one(model, gpu, n_gpus, batch_size, *args)
    step_1 = step if n_gpus == 1 else _one(model, gpu, 1, batch_1, *args)[5]
    speedup = (batch_size / step) / (batch_1 / step_1)
    return Prediction(gpu.name, int(n_gpus), int(batch_size), strategy, bool(overlap),
                      float(efficiency), float(latency), split, int(flops), compute, comm, step,
                      batch_size / step, speedup, speedup / n_gpus, precision, winograd,
                      None if buckets is None else int(buckets), host, calibrated, source,
                      cal["peak_precision"], mode,
                      None if batch_per_gpu is None else int(batch_per_gpu), *borrowed,
                      wire_precision=wire_precision, recompute=bool(recompute),
                      memory_efficiency=mem, memory_bound_s=parts["memory_bound_s"],
                      sustained_efficiency=parts["flops"] / (
                          compute * _peak(gpu, cal["peak_precision"])))


def _memory_recalibrated(gpu, precision, winograd, memory_efficiency):
    """:func:`calibration_for`'s compute efficiency, solved at another memory efficiency."""
    run = gpu.framework_precision(precision)[0] if hasattr(gpu, "framework_precision") \
        else precision
    cal = getattr(gpu, "calibration", {}).get(run)
    owner, p = gpu, run
    if cal is None:
        lent = borrowed_calibration(gpu, run)
        if lent is None:
            return DEFAULT_EFFICIENCY
        owner, p, cal = lent
    if cal.carried_from:
        owner = get_gpu(cal.carried_from)
    return calibrated_efficiency(owner, p, cal, winograd, memory_efficiency)


def scaling(model, gpus, n_range, batch_size=None, strategies=("host", "ring"), **kwargs):
    """Predictions for every GPU kind x strategy x N: a list of :class:`Prediction`."""
    return [predict(model, g, n, batch_size, strategy=s, **kwargs)
            for g in gpus for s in strategies for n in n_range]
