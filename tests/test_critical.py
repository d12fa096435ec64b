"""The communication-bound criterion: the critical batch per device (predict/critical.py),
checked against the cost model's own predictions."""
from types import SimpleNamespace

import pytest

from mgpu_lab import models
from mgpu_lab.predict import costmodel, critical, graph
from mgpu_lab.predict.gpus import CATALOGUE


def test_critical_batch_by_hand():
    # 6P FLOPs per sample, 2 * 4P bytes: b* = (4/3) rate / bw; 12 TFLOP/s over 10 GB/s -> 1600
    assert critical.critical_batch(12e12, 10e9) == pytest.approx(1600)
    assert critical.critical_batch(12e12, 10e9, n_gpus=4) == pytest.approx(1600 * 3 / 4)
    # a CNN does more FLOPs per weight and sample: 600P instead of 6P -> 100 times smaller
    assert critical.critical_batch(12e12, 10e9, 600e6, 1e6) == pytest.approx(16)
    for bad in (dict(rate=0, bw=1e9), dict(rate=1e12, bw=-1)):
        with pytest.raises(ValueError, match="positive"):
            critical.critical_batch(**bad)
    with pytest.raises(ValueError, match="together"):
        critical.critical_batch(1e12, 1e9, flops_per_sample=6e6)


def test_the_cost_model_is_communication_bound_below_the_critical_batch():
    mlp = models.mlp(n_in=256, hidden=(256, 256), seed=0)
    P, per_sample = mlp.n_params, graph.count_flops(mlp, 1)["total"]
    assert 5 * P < per_sample < 7 * P  # an MLP does about 6P FLOPs per sample
    gpu = SimpleNamespace(name="toy", fp32_flops=1e12, host_bw=1e9, peer_bw=2e9)
    N, rate = 8, 1e12 * 0.5
    b_star = critical.critical_batch(rate, gpu.peer_bw, per_sample, P, n_gpus=N)
    for b, bound in ((int(b_star * 0.8), True), (int(b_star * 1.25) + 1, False)):
        p = costmodel.predict(mlp, gpu, N, batch_per_gpu=b, strategy="ring", efficiency=0.5,
                              latency=0, winograd=1)
        assert (p.comm_s > p.compute_s) == bound, (b, b_star, p.comm_s, p.compute_s)
        share = critical.comm_share(rate, gpu.peer_bw, b, N, P, per_sample)
        assert share == pytest.approx(p.comm_s / (p.compute_s + p.comm_s), rel=1e-3)
    # at b* itself compute and communication are equal (up to the graph's count at that batch)
    p = costmodel.predict(mlp, gpu, N, batch_per_gpu=round(b_star), strategy="ring",
                          efficiency=0.5, latency=0, winograd=1)
    assert p.compute_s == pytest.approx(p.comm_s, rel=0.02)


def test_the_table_covers_every_gpu_and_link():
    rows = critical.critical_batch_table("IB-EDR")
    assert [r["gpu"] for r in rows] == list(CATALOGUE)
    for r in rows:
        for link in critical.LINKS:
            assert r[link] == pytest.approx(4 / 3 * r["rate"] / r[f"bw[{link}]"])
        assert r["label"].startswith(("calibrated", "uncalibrated"))
    v100 = next(r for r in rows if r["gpu"] == "V100")
    assert v100["NVLink / peer link"] < v100["host link"] < v100["network"]  # faster link, smaller b*


def test_one_ring_raises_b_star_by_the_ratio_of_all_links_to_one_rings():
    rows = {r["gpu"]: r for r in critical.critical_batch_table("IB-EDR")}
    for name, r in rows.items():
        bw = CATALOGUE[name].ring_bw(8)
        assert r[f"bw[{critical.ONE_RING}]"] == bw
        assert r[critical.ONE_RING] == pytest.approx(4 / 3 * r["rate"] / bw)
    # V100 in a DGX-1: one ring of 8 has 50 of the 150 GB/s, so 3 times the b*; P100: 20 of 80
    v, p = rows["V100"], rows["P100"]
    assert v[critical.ONE_RING] == pytest.approx(3 * v["NVLink / peer link"])
    assert p[critical.ONE_RING] == pytest.approx(4 * p["NVLink / peer link"])
    # where one ring gets the peer figure (NVSwitch), nothing changes
    a = rows["A100"]
    assert a[critical.ONE_RING] == pytest.approx(a["NVLink / peer link"])
