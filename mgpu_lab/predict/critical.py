"""When is data parallelism communication-bound? The critical batch per device.

With P parameters, one device's step on b samples costs about 6 P b FLOPs (2 P for the
forward pass, 4 P for the two gradients of the backward pass, per sample: every weight is
used once per sample, as in dense layers). It then exchanges about 2 * 4P bytes (a ring's
2 (N - 1) / N * 4P, for large N). At ``rate`` FLOP/s and a link of ``bw`` bytes/s per
direction, compute equals communication when

    6 P b / rate = 8 P / bw    =>    b* = 8 rate / (6 bw) = (4 / 3) rate / bw,

independent of P. Below b* samples per device a step spends more time communicating than
computing (without overlap: communication is more than half of the step). A network
whose layers reuse their weights many times per sample (a CNN's convolutions) does more
FLOPs per sample than 6P, so its own b* is smaller; pass ``flops_per_sample`` and P for it.

The rate :func:`critical_batch_table` uses is the cost model's arithmetic roof: the peak
it charges times the roofline's compute efficiency (``calibration_for``'s ``efficiency``),
the rate of kernels bound by their arithmetic, as an MLP's or a transformer's large matrix
products are at batches near b*. For the same FLOPs, kernels bound by memory bandwidth
only lengthen the roofline's step, so its own break-even is at b* or below.
(``efficiency_for``'s FLOPs-only fraction, lower, folds a CNN's memory-bound kernels into
one whole-step rate.)

Precision moves b* twice (:mod:`mgpu_lab.predict.precision`): 16-bit Tensor Cores raise
the rate several times over, and 16-bit gradients on the wire halve the bytes. With v
bytes per gradient value (4 for float32, 2 for 16-bit: ``value_bytes``),

    b* = 2 v rate / (6 bw) = (v / 3) rate / bw,

so mixed precision with a 16-bit exchange has b* = (rate16 / rate32) / 2 times the
float32 one, and with a float32 exchange (``wire_precision="fp32"``, the default, as the
cost model) rate16 / rate32 times.
"""
from .algorithms import ring_allreduce_seconds
from .costmodel import calibration_for
from .gpus import CATALOGUE, get_gpu
from .network import get_network
from .precision import value_bytes as _value_bytes

__all__ = ["critical_batch", "critical_batch_table", "LINKS", "ONE_RING"]

# "NVLink / peer link" is all of a GPU's peer links at once (``GPU.peer_or_host_bw``: for a
# V100, six NVLinks, 150 GB/s per direction), which only several rings over the server's
# GPUs together reach (NCCL's channels): the most favourable link, so the smallest b*.
LINKS = ("host link", "NVLink / peer link", "network")
# One ring through the 8 GPUs of the GPU's reference server (``GPU.ring_bw(8)``: for a V100
# in a DGX-1 the two-link cycle, 50 GB/s; for a P100 one link, 20 GB/s): a column of its own
# in every row of :func:`critical_batch_table`, beside :data:`LINKS`.
ONE_RING = "one ring of 8"


def critical_batch(rate, bw, flops_per_sample=None, n_params=None, n_gpus=None,
                   value_bytes=4):
    """The per-device batch b* at which compute (``flops_per_sample`` * b / ``rate``)
    equals a ring all-reduce of v P bytes over ``bw`` (v = ``value_bytes`` per gradient
    value: 4 for float32, 2 for 16-bit). Defaults: 6P FLOPs per sample and the large-N
    ring's 2 * 4P bytes, which gives (4/3) rate / bw; with ``n_gpus`` the exact
    2 (N - 1) / N * v P."""
    if rate <= 0 or bw <= 0 or value_bytes <= 0:
        raise ValueError(f"rate, bw and value_bytes must be positive, got {rate}, {bw} "
                         f"and {value_bytes}")
    if (flops_per_sample is None) != (n_params is None):
        raise ValueError("give flops_per_sample and n_params together (or neither: 6P "
                         "FLOPs per sample)")
    ratio = 6.0 if flops_per_sample is None else flops_per_sample / n_params  # FLOPs / P
    share = 1.0 if n_gpus is None else (n_gpus - 1) / n_gpus
    return 2 * share * value_bytes * rate / (ratio * bw)


def _rate(gpu, precision):
    """(FLOP/s of ``gpu``'s arithmetic-bound kernels at ``precision``: the peak charged x
    the roofline's compute efficiency, the calibration dict)."""
    c = calibration_for(gpu, precision)
    return gpu.peak(c["peak_precision"]) * c["efficiency"], c


def critical_batch_table(network="IB-EDR", precision="fp32", gpus=None, wire_precision="fp32"):
    """One row per catalogue GPU (or per name in ``gpus``): its ``rate`` at ``precision``,
    the peak the cost model charges (TF32 for "fp32" on Ampere and later) times the
    roofline's compute efficiency (calibrated, or labelled uncalibrated), and b* for its
    host link, all its peer links together (NVLink, or PCIe where it has none), ``network``
    (one port per node, shared by nothing else) and, under :data:`ONE_RING`, one ring
    through 8 of the GPUs (``ring_bw(8)``); each link's bytes/s under ``bw[link]``.
    ``wire_precision``: what the exchange sends ("fp32": float32 gradients, the default;
    "fp16" or "bf16": 16-bit, half the bytes). A GPU without a peak at ``precision`` (a K80 at "fp16") is left out."""
    net = get_network(network)
    v = _value_bytes(wire_precision)
    out = []
    for name in gpus or CATALOGUE:
        g = get_gpu(name)
        if precision != "fp32" and precision not in g.tensor_flops:
            continue  # no Tensor Cores for it: nothing to predict
        rate, cal = _rate(g, precision)
        bws = {"host link": g.host_bw, "NVLink / peer link": g.peer_or_host_bw(),
               "network": net.bw, ONE_RING: g.ring_bw(8)}
        out.append({"gpu": g.name, "precision": precision, "wire_precision": wire_precision,
                    "rate": rate, "label": cal["label"], "assumed_like": cal["assumed_like"],
                    "peer_link": g.peer_link, "network_name": net.name,
                    **{link: critical_batch(rate, bw, value_bytes=v) for link, bw in bws.items()},
                    **{f"bw[{link}]": bw for link, bw in bws.items()}})
    return out


def comm_share(rate, bw, batch, n_gpus, n_params, flops_per_sample=None, value_bytes=4):
    """Communication's share of a step without overlap, as the cost model's own ring
    formula gives it (no latency), with ``value_bytes`` per gradient value (4: float32,
    2: 16-bit): checks b* (share 1/2 there)."""
    f = 6 * n_params if flops_per_sample is None else flops_per_sample
    compute = f * batch / rate
    comm = ring_allreduce_seconds(value_bytes * n_params, n_gpus, bw, latency=0)
    return comm / (compute + comm)


__all__ += ["comm_share"]
