"""The network tier: nodes of G GPUs (NVLink or PCIe inside) joined by a network.

A cluster of N = M * G GPUs: M nodes, G GPUs each, one network port per node with its
own bandwidth ``bw`` (bytes/s per direction) and latency. With S = 4P gradient bytes:

    flat ring (ordered node by node):   every step moves S / N over every link, and one
        link per node is the network: 2 (N - 1) / N * S / min(peer_bw, net_bw)
        + 2 (N - 1) alpha_net
    halving-doubling across all N:      step k pairs GPUs 2^k apart and moves S / 2^(k+1);
        steps inside a node use its links, the others the network, where the node's G
        GPUs share its one port (net_bw / G each); 2 log2 N latencies
    hierarchical (the engines' HierarchicalAllReduce runs the same algorithm, as Horovod's
        hierarchical all-reduce, HOROVOD_HIERARCHICAL_ALLREDUCE, does; NCCL by default does
        not: its rings run through all N GPUs ordered node by node): a ring reduce-scatter
        inside each node, so that local rank j holds the node's sum of shard j (S / G
        bytes), over ONE ring through the node's G GPUs, at ``gpu.ring_bw(G)`` (on a DGX-1,
        the links joining its slowest pair, not all of a GPU's links):
        (G - 1) / G * S / ring_bw(G) + (G - 1) alpha
        + across the nodes, one ring per local rank j through the M GPUs of rank j, each
          all-reducing its S / G shard; the G rings of a node share its one port
          (net_bw / G each): 2 (M - 1) / M * S / net_bw + 2 (M - 1) alpha_net
        + a ring all-gather inside each node (the mirror image of the reduce-scatter).
        Bytes per GPU: 2 (G - 1) / G * S inside and 2 (M - 1) / (M G) * S on the network;
        per node, the same network bytes as a flat ring ordered node by node, in
        2 (M - 1) network latencies instead of 2 (N - 1).
    host gather (a parameter server in one node's host): the G local GPUs over PCIe,
        the N - G others over that host's network port, all queued at the host:
        2 G (S / host_bw + alpha) + 2 (N - G) (S / net_bw + alpha_net)

Bandwidths are line rates from the standards, cited in :data:`NETWORKS`; latencies are
assumptions (marked so). Everything here is a prediction.
"""
import csv
import math
from dataclasses import dataclass

from ..data import DATA_DIR

from ..models import build
from . import algorithms, costmodel, graph
from .gpus import get_gpu
from .memory import OPTIMIZER_SLOTS
from .published import HOROVOD_FUSION_BYTES

__all__ = ["Network", "NETWORKS", "CLUSTER_STRATEGIES", "get_network", "cluster_comm_seconds",
           "predict_cluster"]

Gb = 1e9 / 8  # bytes/s in one Gbit/s


@dataclass(frozen=True)
class Network:
    """One node-to-node network: ``bw`` bytes/s per direction per node, ``latency`` s."""

    name: str
    bw: float
    latency: float  # assumed, per message or collective step
    source: str


NETWORKS = {n.name: n for n in [
    Network("IB-EDR", 100 * Gb, 5e-6,
            "InfiniBand Trade Association, InfiniBand Architecture Specification / roadmap: "
            "EDR 4x links carry 100 Gb/s; latency assumed"),
    Network("50GbE-RoCE", 50 * Gb, 10e-6,
            "IEEE 802.3cd-2018 (50 Gb/s Ethernet); RDMA over it: RoCE v2, InfiniBand Trade "
            "Association, Supplement Annex A17 (2014); latency assumed"),
    Network("25GbE-RoCE", 25 * Gb, 10e-6,
            "IEEE 802.3by-2016 (25 Gb/s Ethernet); RDMA over it: RoCE v2, InfiniBand Trade "
            "Association, Supplement Annex A17 (2014); latency assumed"),
]}

CLUSTER_STRATEGIES = ("ring", "halving_doubling", "hierarchical", "host")


def get_network(name):
    if isinstance(name, Network):
        return name
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(NETWORKS)}")
    return NETWORKS[name]


def _check(n_gpus, gpus_per_node, strategy):
    for v, what in ((n_gpus, "n_gpus"), (gpus_per_node, "gpus_per_node")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
    if n_gpus % gpus_per_node:
        raise ValueError(f"n_gpus ({n_gpus}) must be a multiple of gpus_per_node "
                         f"({gpus_per_node}): nodes are whole")
    if strategy not in CLUSTER_STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of "
                         f"{', '.join(CLUSTER_STRATEGIES)}")


def cluster_comm_seconds(strategy, n_bytes, n_gpus, gpus_per_node, gpu, network,
                         latency=algorithms.DEFAULT_LATENCY):
    """One exchange of ``n_bytes`` on ``n_gpus`` GPUs in nodes of ``gpus_per_node``, for
    'ring', 'halving_doubling', 'hierarchical' or 'host' (see the module's formulas).
    Inside one node (N <= G) every strategy is the single-node formula (the
    hierarchical one is then its in-node ring alone: a ring all-reduce at ``ring_bw(N)``)."""
    _check(n_gpus, gpus_per_node, strategy)
    gpu, net = get_gpu(gpu), get_network(network)
    peer = gpu.peer_or_host_bw()
    N, G = n_gpus, gpus_per_node
    if N <= G:
        if strategy == "hierarchical":  # one ring through the node's N GPUs
            return algorithms.ring_allreduce_seconds(n_bytes, N, gpu.ring_bw(N), latency)
        return algorithms.comm_seconds(strategy, n_bytes, N, gpu.host_bw, peer, latency)
    if strategy == "ring":
        return algorithms.ring_allreduce_seconds(n_bytes, N, min(peer, net.bw), net.latency)
    if strategy == "halving_doubling":
        return _halving_doubling(n_bytes, N, G, peer, net, latency)
    if strategy == "host":
        return (algorithms.host_gather_seconds(n_bytes, G, gpu.host_bw, latency)
                + algorithms.host_gather_seconds(n_bytes, N - G, net.bw, net.latency))
    # reduce-scatter inside the node, then (mirror image) all-gather: each (G-1)/G S, over
    # one ring through the node's G GPUs (the links joining its slowest pair)
    inside = (G - 1) / G * n_bytes / gpu.ring_bw(G) + (G - 1) * latency
    # G rings (one per local rank) of S/G bytes each, sharing the node's port: bw/G each
    across = algorithms.ring_allreduce_seconds(n_bytes / G, N // G, net.bw / G, net.latency)
    return 2 * inside + across


def _halving_doubling(n_bytes, N, G, peer, net, latency):
    """Halving-doubling over all N GPUs of N/G nodes: step k pairs GPUs 2^k apart and moves
    n_bytes / 2^(k+1). Steps within a node (2^k < G) run on its links; the others cross the
    network, where all G GPUs of a node send at once through its one port (bw / G each)."""
    t = 0.0
    for k in range(math.ceil(math.log2(N))):
        inside = 2 ** k < G
        bw = peer if inside else min(peer, net.bw / G)
        t += n_bytes / 2 ** (k + 1) / bw + (latency if inside else net.latency)
    return 2 * t  # the reduce-scatter, then the all-gather in reverse


def _compute(model, gpu, batch_per_gpu, precision, winograd):
    """(compute_s, forward_s, efficiency label) of one GPU's step on its split."""
    p = costmodel.predict(model, gpu, 1, batch_per_gpu=batch_per_gpu, strategy="ring",
                          precision=precision, winograd=winograd)
    counts = graph.count_flops(model, batch_per_gpu)
    return p.compute_s, p.compute_s * counts["forward"] / counts["total"], p


def predict_cluster(model, gpu, n_gpus, gpus_per_node, network, batch_per_gpu,
                    strategy="hierarchical", overlap=True, buckets=None, precision="fp32",
                    winograd=None, latency=algorithms.DEFAULT_LATENCY, optimizer="momentum"):
    """Predicted weak-scaling step on a cluster: a dict with ``step_s``, ``compute_s``,
    ``comm_s``, ``images_per_s``, ``scaling_efficiency`` (images/s over N times one GPU's,
    the 1-GPU step having no exchange), ``label`` (calibrated or not) and the inputs.
    ``buckets``: the gradient in that many pieces under the backward pass (None with
    ``overlap``: the ideal forward + max(backward, comm))."""
    _check(n_gpus, gpus_per_node, strategy)
    model = build(model)
    compute, fwd, one = _compute(model, gpu, batch_per_gpu, precision, winograd)
    S = costmodel.gradient_bytes(model)
    k = buckets or 1
    bucket = cluster_comm_seconds(strategy, S / k, n_gpus, gpus_per_node, gpu, network, latency)
    host = algorithms.host_update_seconds(S, n_gpus, slots=OPTIMIZER_SLOTS[optimizer]) \
        if strategy == "host" else 0.0
    up, back = (bucket / 2, k * bucket / 2) if strategy == "host" else (bucket, 0.0)
    if not overlap:
        step = compute + k * up + host + back
    else:  # the host's return trip hides under the next forward pass at most
        under = fwd + max(compute - fwd, k * up) if buckets is None else \
            costmodel.bucketed_step_seconds(fwd, compute - fwd, up, k)
        step = under + host + max(0.0, back - fwd)
    return {"gpu": get_gpu(gpu).name, "n_gpus": n_gpus, "gpus_per_node": gpus_per_node,
            "network": get_network(network).name, "strategy": strategy,
            "batch_per_gpu": batch_per_gpu, "compute_s": compute, "comm_s": k * bucket + host,
            "step_s": step, "images_per_s": n_gpus * batch_per_gpu / step,
            "scaling_efficiency": compute / step, "label": one.label,
            "calibrated": one.calibrated}


# -- the published multi-node figures ----------------------------------------------------
MULTINODE_CSV = DATA_DIR / "published_multinode.csv"
__all__ += ["MULTINODE_CSV", "load_multinode", "compare_multinode"]


def load_multinode(path=MULTINODE_CSV):
    """The published multi-node scaling efficiencies as dicts (numbers converted)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.update({k: int(r[k]) for k in ("gpus_per_node", "n_gpus", "baseline_gpus",
                                          "batch_per_gpu")},
                 scaling_efficiency=float(r["scaling_efficiency"]))
    return rows


def _buckets(row, model):
    if "Horovod" in row["framework_setting"]:
        return math.ceil(costmodel.gradient_bytes(model) / HOROVOD_FUSION_BYTES)
    return len(model.params)


def compare_multinode(nets, rows=None, strategies=CLUSTER_STRATEGIES, winograd=None):
    """Every published multi-node row with the predictions beside it: for each strategy,
    the predicted scaling efficiency relative to the row's baseline (1 GPU, or one full
    node), and ``error`` = predicted / published - 1 for the row's own strategy.
    ``nets``: {network name: model}. Buckets: Horovod fuses tensors into 64 MiB buffers;
    Caffe2 sends each parameter tensor's gradient as the backward pass makes it."""
    out = []
    for r in (load_multinode() if rows is None else rows):
        model = nets[r["network"]]
        kw = dict(batch_per_gpu=r["batch_per_gpu"], precision=r["precision"],
                  winograd=winograd, buckets=_buckets(r, model))
        args = (model, r["gpu"])
        pred = {}
        for s in strategies:
            n = predict_cluster(*args, r["n_gpus"], r["gpus_per_node"], r["node_network"],
                                strategy=s, **kw)
            base = predict_cluster(*args, r["baseline_gpus"], min(r["gpus_per_node"],
                                   r["baseline_gpus"]), r["node_network"], strategy=s, **kw)
            pred[s] = n["scaling_efficiency"] / base["scaling_efficiency"]
        mine = pred[r["strategy"]]
        out.append({**r, "predicted": mine, "error": mine / r["scaling_efficiency"] - 1,
                    **{f"predicted_{s}": v for s, v in pred.items()}, "label": n["label"]})
    return out
