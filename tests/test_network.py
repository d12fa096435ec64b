"""The network tier and the published multi-node figures (predict/network.py)."""
import pytest

from mgpu_lab import models
from mgpu_lab.predict import algorithms, network
from mgpu_lab.predict.gpus import get_gpu

S = 100e6  # bytes


def test_networks_are_cited():
    assert network.NETWORKS["IB-EDR"].bw == 100e9 / 8
    assert network.NETWORKS["25GbE-RoCE"].bw == 25e9 / 8
    for n in network.NETWORKS.values():
        assert "IEEE" in n.source or "InfiniBand" in n.source
        assert "latency assumed" in n.source


def test_hierarchical_by_hand():
    v100, net = get_gpu("V100"), network.NETWORKS["IB-EDR"]
    t = network.cluster_comm_seconds("hierarchical", S, 32, 8, "V100", "IB-EDR", latency=0)
    # reduce-scatter and all-gather inside a node of 8, each 7/8 S over ONE ring of 8 V100s
    # (the DGX-1's two-link cycle, 50 GB/s, not all six links' 150); across the 4 nodes,
    # 8 rings (one per local rank) on S/8 each, sharing the node's port
    assert v100.ring_bw(8) == 50e9 < v100.peer_bw
    inside = 7 / 8 * S / v100.ring_bw(8)
    across = 2 * 3 / 4 * (S / 8) / (net.bw / 8) + 2 * 3 * net.latency
    assert t == pytest.approx(2 * inside + across)


def test_hierarchical_moves_a_node_ordered_flat_rings_network_bytes_in_fewer_latencies():
    net = network.NETWORKS["IB-EDR"]
    fast_inside = get_gpu("H100")  # NVLink far faster than the network: the network decides
    n, g = 64, 8
    hier = network.cluster_comm_seconds("hierarchical", S, n, g, fast_inside, net, latency=0)
    flat = network.cluster_comm_seconds("ring", S, n, g, fast_inside, net, latency=0)
    inside = 2 * (g - 1) / g * S / fast_inside.ring_bw(g)  # NVSwitch: one ring gets peer_bw
    # the network terms without latency: flat 2 (N-1)/N S/bw, hierarchical 2 (M-1)/M S/bw
    flat_bytes = 2 * (n - 1) / n * S / net.bw
    hier_bytes = 2 * (n // g - 1) / (n // g) * S / net.bw
    assert flat == pytest.approx(flat_bytes + 2 * (n - 1) * net.latency)
    assert hier == pytest.approx(inside + hier_bytes + 2 * (n // g - 1) * net.latency)
    # about the same network bytes per node's port (both tend to 2 S: here 1.75 S and 1.97 S)
    assert hier_bytes == pytest.approx(flat_bytes, rel=0.15)
    assert 2 * (n // g - 1) < 2 * (n - 1) / 4  # ... in far fewer network latencies


def test_hierarchical_inside_one_node_is_one_ring_through_it():
    # N <= G: the in-node reduce-scatter and all-gather alone, one ring at ring_bw(N)
    for gpu, n in (("V100", 8), ("V100", 4), ("P100", 8)):
        g = get_gpu(gpu)
        t = network.cluster_comm_seconds("hierarchical", S, n, n, gpu, "IB-EDR", latency=0)
        assert t == pytest.approx(2 * (n - 1) / n * S / g.ring_bw(n))
    assert get_gpu("P100").ring_bw(8) == 20e9  # one NVLink 1.0 link per direction


def test_flat_ring_is_bound_by_the_network_and_pays_its_latency():
    net = network.NETWORKS["25GbE-RoCE"]
    t = network.cluster_comm_seconds("ring", S, 64, 4, "P100", net)
    assert t == pytest.approx(2 * 63 / 64 * S / net.bw + 2 * 63 * net.latency)
    # inside one node it is the single-node ring on NVLink
    assert network.cluster_comm_seconds("ring", S, 4, 4, "P100", net) == pytest.approx(
        algorithms.ring_allreduce_seconds(S, 4, get_gpu("P100").peer_bw))


def test_host_gather_across_nodes_queues_every_remote_gpu_on_one_port():
    net = network.NETWORKS["IB-EDR"]
    t = network.cluster_comm_seconds("host", S, 16, 8, "V100", net, latency=0)
    assert t == pytest.approx(2 * 8 * S / get_gpu("V100").host_bw
                              + 2 * 8 * (S / net.bw + net.latency))


def test_bad_clusters_are_refused():
    with pytest.raises(ValueError, match="multiple of gpus_per_node"):
        network.cluster_comm_seconds("ring", S, 12, 8, "V100", "IB-EDR")
    with pytest.raises(ValueError, match="unknown network"):
        network.cluster_comm_seconds("ring", S, 16, 8, "V100", "carrier pigeon")
    with pytest.raises(ValueError, match="unknown strategy"):
        network.cluster_comm_seconds("tree", S, 16, 8, "V100", "IB-EDR")


def test_multinode_rows_are_sourced_and_predicted():
    rows = network.load_multinode()
    assert {r["source_id"] for r in rows} == {"goyal2017", "horovod-docs"}
    for r in rows:
        assert r["url"].startswith("https://") and r["table"] and r["interconnect"]
        assert r["node_network"] in network.NETWORKS and 0 < r["scaling_efficiency"] <= 1
    mlp = models.mlp(n_in=64, hidden=(64,), seed=0)  # stands in for the big nets
    out = network.compare_multinode({r["network"]: mlp for r in rows})
    for r in out:
        assert r["error"] == pytest.approx(r["predicted"] / r["scaling_efficiency"] - 1)
        assert r["predicted"] == r[f"predicted_{r['strategy']}"]
        assert all(0 < r[f"predicted_{s}"] <= 1.0001 for s in network.CLUSTER_STRATEGIES)
    assert "uncalibrated" in next(r for r in out if r["gpu"] == "P100-PCIe")["label"]
