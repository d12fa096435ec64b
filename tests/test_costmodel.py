"""The cost model's formulas on hand-computed cases, and how predict() puts them together."""
import math
from types import SimpleNamespace

import pytest

from mgpu_lab import models
from mgpu_lab.predict import costmodel, graph
from mgpu_lab.predict.gpus import CATALOGUE
from mgpu_lab.predict.costmodel import (bucketed_step_seconds, comm_seconds, compute_seconds, gradient_bytes,
                                         host_gather_seconds, host_update_seconds, largest_split, latency_steps,
                                         predict, ring_allreduce_seconds, scaling, step_seconds,
                                         tree_allreduce_seconds)

# A made-up GPU with round numbers, so every expected value below is worked out by hand.
TOY = SimpleNamespace(name="toy", fp32_flops=1e12, host_bw=1e9, peer_bw=1e10)


@pytest.fixture(scope="module")
def mlp():
    return models.mlp(n_in=64, hidden=(64,), seed=0)  # never compiled here: only counted


@pytest.fixture
def linear_flops(monkeypatch):
    """count_flops -> exactly 1 GFLOP per sample, so compute times are easy to work out."""
    monkeypatch.setattr(graph, "count_flops", lambda model, b: {
        "forward": 10 ** 9 * b // 4, "backward": 3 * 10 ** 9 * b // 4, "total": 10 ** 9 * b})


def test_gradient_bytes_of_the_mlp(mlp):
    # (64*64 + 64) + (64*10 + 10) = 4,810 float32 parameters
    assert gradient_bytes(mlp) == 4810 * 4


def test_largest_split_rounds_up():
    assert largest_split(64, 2) == 32
    assert largest_split(10, 4) == 3  # splits 3, 3, 2, 2: the step waits for a 3
    assert largest_split(7, 7) == 1


def test_compute_seconds():
    assert compute_seconds(1e12, 1e13, 0.5) == pytest.approx(0.2)
    assert compute_seconds(1e12, 1e13, 0.5, waves=2) == pytest.approx(0.4)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="efficiency"):
            compute_seconds(1e12, 1e13, bad)


def test_host_gather_is_serialised_at_the_host():
    # 2 * 4 transfers of (1 MB / 10 GB/s + 10 us) = 800 us + 80 us: a latency per transfer
    assert host_gather_seconds(1e6, 4, 1e10, 1e-5) == pytest.approx(880e-6)
    assert host_gather_seconds(1e6, 8, 1e10, 0) == pytest.approx(2 * host_gather_seconds(1e6, 4, 1e10, 0))


def test_ring_allreduce():
    # 2 * 3/4 * 1 MB / 10 GB/s + 2 * 3 * 10 us = 150 us + 60 us
    assert ring_allreduce_seconds(1e6, 4, 1e10, 1e-5) == pytest.approx(210e-6)
    assert ring_allreduce_seconds(1e6, 1, 1e10, 1e-5) == 0  # one GPU: nothing to reduce
    # the bandwidth term tends to 2 P / bw however many GPUs there are: 2 * 999/1000 * 100 us
    assert ring_allreduce_seconds(1e6, 1000, 1e10, 0) == pytest.approx(199.8e-6)


def test_comm_seconds_picks_the_strategy():
    assert comm_seconds("host", 1e6, 4, 1e10, 1e11, 0) == pytest.approx(800e-6)
    assert comm_seconds("ring", 1e6, 4, 1e10, 1e11, 0) == pytest.approx(15e-6)
    # tree: ceil(log2 4) = 2 steps of 1 MB over 100 GB/s = 20 us
    assert comm_seconds("tree", 1e6, 4, 1e10, 1e11, 0) == pytest.approx(20e-6)
    with pytest.raises(ValueError, match="host, ring, sharded, halving_doubling"):
        comm_seconds("butterfly", 1e6, 4, 1e10, 1e11)


def test_step_seconds_with_and_without_overlap():
    assert step_seconds(3.0, 2.0) == 5.0
    assert step_seconds(3.0, 2.0, overlap=True) == 3.0
    assert step_seconds(1.0, 2.0, overlap=True) == 2.0


def test_predict_host_gather_by_hand(mlp, linear_flops):
    p = predict(mlp, TOY, 4, 64, strategy="host", efficiency=0.5, latency=1e-5)
    P = 19240  # bytes of gradients
    assert (p.split, p.flops) == (16, 16 * 10 ** 9)
    assert p.compute_s == pytest.approx(16e9 / 0.5e12)  # 32 ms
    # 8 transfers of P bytes at 1 GB/s + 10 us each; then the host reads 4 gradients, writes
    # their stack, and a momentum update reads w, g, v and writes w, v: (4 + 6) P at 76.8 GB/s
    host = 10 * P / 76.8e9
    assert p.host_s == pytest.approx(host)
    assert p.comm_s == pytest.approx(2 * 4 * (P / 1e9 + 1e-5) + host)  # 233.92 us + 2.5 us
    assert p.step_s == pytest.approx(p.compute_s + p.comm_s)
    assert p.images_per_s == pytest.approx(64 / p.step_s)
    one = 64e9 / 0.5e12 + 2 * (P / 1e9 + 1e-5) + 7 * P / 76.8e9  # the same batch on one GPU
    assert p.speedup == pytest.approx(one / p.step_s)
    assert p.scaling_efficiency == pytest.approx(p.speedup / 4)
    assert (p.gpu, p.n_gpus, p.batch_size, p.strategy, p.efficiency) == ("toy", 4, 64, "host", 0.5)


def test_predict_ring_and_overlap_by_hand(mlp, linear_flops):
    p = predict(mlp, TOY, 4, 64, strategy="ring", efficiency=0.5, latency=1e-5)
    assert p.comm_s == pytest.approx(2 * 3 / 4 * 19240 / 1e10 + 6e-5)
    one = predict(mlp, TOY, 1, 64, strategy="ring", efficiency=0.5, latency=1e-5)
    assert one.comm_s == 0 and one.speedup == 1.0
    assert p.speedup == pytest.approx(one.step_s / p.step_s)
    slow = SimpleNamespace(name="slow link", fp32_flops=1e12, host_bw=1e5, peer_bw=1e5)
    q = predict(mlp, slow, 2, 64, overlap=True, efficiency=0.5, latency=0, host_memory_bw=1e30)
    assert q.comm_s == pytest.approx(4 * 19240 / 1e5)  # 0.77 s: more than compute (64 ms)
    assert q.step_s == q.comm_s  # with overlap the slower one sets the pace


def test_shared_cores_multiply_compute_by_waves(mlp, linear_flops):
    # 4 devices pinned round-robin on 2 cores: each core runs two splits of 16, one after the other
    kw = dict(efficiency=1.0, latency=0, cores=2)
    assert predict(mlp, TOY, 4, 64, **kw).compute_s == pytest.approx(2 * 16e9 / 1e12)
    assert predict(mlp, TOY, 3, 64, **kw).compute_s == pytest.approx(2 * 22e9 / 1e12)
    assert predict(mlp, TOY, 2, 64, **kw).compute_s == pytest.approx(32e9 / 1e12)
    fast = SimpleNamespace(name="free comm", fp32_flops=1e12, host_bw=1e30, peer_bw=1e30)
    free = dict(host_memory_bw=1e30)
    assert predict(mlp, fast, 4, 64, **kw, **free).speedup == pytest.approx(2.0)  # capped by the cores
    assert predict(mlp, fast, 4, 64, efficiency=1.0, latency=0, **free).speedup == pytest.approx(4.0)


def test_predict_counts_flops_on_the_real_graph(mlp):
    p = predict(mlp.spec, TOY, 3, 10)  # a spec is rebuilt; splits 4, 3, 3
    assert p.flops == graph.count_flops(mlp, 4)["total"] > 0
    assert p.compute_s == pytest.approx(p.flops / (TOY.fp32_flops * costmodel.DEFAULT_EFFICIENCY))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_gpus=0, batch_size=8), "n_gpus must be an integer >= 1"),
    (dict(n_gpus=True, batch_size=8), "n_gpus must be an integer >= 1"),
    (dict(n_gpus=4, batch_size=3), "every GPU needs at least one sample"),
    (dict(n_gpus=2, batch_size=8, strategy="star"), "unknown strategy 'star'"),
    (dict(n_gpus=2, batch_size=8, buckets=0), "buckets must be"),
    (dict(n_gpus=2, batch_size=8, optimizer="lbfgs"), "unknown optimizer"),
    (dict(n_gpus=2, batch_size=8, precision="tf32"), "only a float32 peak"),
    (dict(n_gpus=2, batch_size=8, cores=0), "cores must be"),
])
def test_predict_rejects_bad_arguments(mlp, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict(mlp, TOY, **kwargs)


def test_scaling_covers_every_combination(mlp, linear_flops):
    other = SimpleNamespace(name="other", fp32_flops=2e12, host_bw=1e9, peer_bw=1e10)
    ps = scaling(mlp, [TOY, other], [1, 2, 4], 64)
    assert [(p.gpu, p.strategy, p.n_gpus) for p in ps] == [
        (g, s, n) for g in ("toy", "other") for s in ("host", "ring") for n in (1, 2, 4)]
    assert all(p.speedup == 1.0 for p in ps if p.n_gpus == 1)


def test_catalogue_gpus_by_name(mlp, linear_flops):
    from mgpu_lab.predict.gpus import get_gpu
    v100 = get_gpu("V100")
    host = predict(mlp, "V100", 2, 64, strategy="host", latency=0, host_memory_bw=1e30)
    ring = predict(mlp, "v100", 2, 64, strategy="ring", latency=0)
    assert host.gpu == ring.gpu == "V100"
    assert host.comm_s == pytest.approx(2 * 2 * 19240 / v100.host_bw)
    assert ring.comm_s == pytest.approx(2 * 1 / 2 * 19240 / v100.peer_bw)
    # the catalogue's calibration, with the default (Winograd F(4x4,3x3)) count: the
    # roofline's compute efficiency, which gives the published figure back
    assert host.efficiency == pytest.approx(costmodel.calibrated_efficiency(v100, "fp32"))
    assert 0.2 < host.efficiency < 0.8 and host.memory_efficiency == costmodel.MEMORY_EFFICIENCY
    assert host.calibrated and host.label.startswith("calibrated (NVIDIA DeepLearningExamples")
    # the FLOPs-only model, as before the roofline: FLOPs / (peak x FLOPs-only efficiency)
    flat = predict(mlp, "V100", 2, 64, strategy="host", latency=0, host_memory_bw=1e30,
                   roofline=False)
    eff = v100.calibration["fp32"].efficiency(v100.fp32_flops, costmodel.DEFAULT_WINOGRAD)
    assert flat.efficiency == pytest.approx(eff) and flat.memory_efficiency is None
    assert flat.compute_s == pytest.approx(32e9 / (v100.fp32_flops * eff))
    no_peer = SimpleNamespace(name="no peer link", fp32_flops=1e12, host_bw=1e9, peer_bw=None)
    assert predict(mlp, no_peer, 2, 64, strategy="ring", latency=0).comm_s == \
        pytest.approx(19240 / 1e9)  # falls back to the host link
    bare = predict(mlp, no_peer, 2, 64)  # no calibration: assumed, and it says so
    assert bare.efficiency == costmodel.DEFAULT_EFFICIENCY and not bare.calibrated
    assert bare.label == "uncalibrated (assumed efficiency 50%)"
    with pytest.raises(ValueError, match="unknown GPU"):
        predict(mlp, "Voodoo2", 2, 64)


def test_prediction_figures_say_they_are_predicted(mlp, linear_flops):
    import matplotlib.pyplot as plt

    from mgpu_lab.figures import plots
    ps = scaling(mlp, ["K80", "V100"], [1, 2, 4], 64)
    for fig in (plots.predicted_speedup(ps), plots.step_breakdown(ps)):
        ax = fig.axes[0]
        assert ax.get_title() and ("(x)" in ax.get_ylabel() or "(ms)" in ax.get_ylabel())
        notes = " ".join(t.get_text() for t in ax.texts)
        assert "predicted, not measured" in notes and "mgpu_lab.predict.costmodel" in notes
        plt.close(fig)
    fig = plots.predicted_speedup(ps)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"K80, host", "K80, ring", "V100, host", "V100, ring"} <= set(labels)
    plt.close(fig)


# -- latency per step, the tree, buckets ----------------------------------------------
def test_latency_steps_and_the_tree_all_reduce():
    for n in range(1, 70):
        assert latency_steps("tree", n) == math.ceil(math.log2(n))
        assert latency_steps("ring", n) == 2 * (n - 1) and latency_steps("host", n) == 2 * n
    # latency only: each algorithm pays latency_steps * alpha
    for s in ("host", "ring", "tree"):
        assert comm_seconds(s, 0, 8, 1e9, 1e9, 1e-5) == pytest.approx(latency_steps(s, 8) * 1e-5)
    # 8 GPUs, 1 MB, 10 GB/s, 10 us: 3 steps of (100 us + 10 us)
    assert tree_allreduce_seconds(1e6, 8, 1e10, 1e-5) == pytest.approx(330e-6)
    assert tree_allreduce_seconds(1e6, 1, 1e10, 1e-5) == 0
    # small messages: the tree's 3 latencies beat the ring's 14; large ones: the ring's bandwidth wins
    assert tree_allreduce_seconds(1e3, 8, 1e10) < ring_allreduce_seconds(1e3, 8, 1e10)
    assert tree_allreduce_seconds(1e8, 8, 1e10) > ring_allreduce_seconds(1e8, 8, 1e10)


def test_host_update_is_memory_bound():
    # 4 GPUs, 1 MB, momentum (1 slot): read 4 + write 1 to stack; read 3 + write 2 to update
    assert host_update_seconds(1e6, 4, 1e10, slots=1) == pytest.approx(10 * 1e6 / 1e10)
    assert host_update_seconds(1e6, 4, 1e10, slots=0) == pytest.approx(8 * 1e6 / 1e10)


def test_bucketed_step_by_hand():
    # forward 1, backward 2, 4 buckets of 0.25 each: the link keeps up, only the last is exposed
    assert bucketed_step_seconds(1.0, 2.0, 0.25, 4) == pytest.approx(1 + 2 + 0.25)
    # a slow link (1.0 per bucket): it starts after the first bucket and never idles
    assert bucketed_step_seconds(1.0, 2.0, 1.0, 4) == pytest.approx(1 + 0.5 + 4.0)
    assert bucketed_step_seconds(1.0, 2.0, 1.0, 4, overlap=False) == pytest.approx(1 + 2 + 4)
    assert bucketed_step_seconds(1.0, 2.0, 1.0, 1) == pytest.approx(4.0)  # one bucket: nothing hidden
    with pytest.raises(ValueError, match="buckets"):
        bucketed_step_seconds(1.0, 2.0, 1.0, 0)


def test_one_bucket_without_overlap_is_the_old_formula(mlp, linear_flops):
    P = 19240
    for strategy in ("host", "ring"):
        old = predict(mlp, TOY, 4, 64, strategy=strategy, efficiency=0.5, latency=1e-5)
        new = predict(mlp, TOY, 4, 64, strategy=strategy, efficiency=0.5, latency=1e-5, buckets=1)
        assert new.step_s == pytest.approx(old.step_s) == pytest.approx(old.compute_s + old.comm_s)
    # k buckets without overlap: k times the latencies, the same bandwidth term
    k4 = predict(mlp, TOY, 4, 64, strategy="ring", efficiency=0.5, latency=1e-5, buckets=4)
    assert k4.comm_s == pytest.approx(2 * 3 / 4 * P / 1e10 + 4 * 6 * 1e-5)
    # with overlap: forward 8 ms + max(backward 24 ms / 4 + comm, 24 ms + comm / 4)
    ov = predict(mlp, TOY, 4, 64, strategy="ring", efficiency=0.5, latency=1e-5, buckets=4, overlap=True)
    assert ov.step_s == pytest.approx(8e-3 + max(6e-3 + k4.comm_s, 24e-3 + k4.comm_s / 4))


def test_k80_one_convention_for_the_host_link_and_a_board_ordered_ring(mlp, linear_flops):
    k80 = costmodel.get_gpu("K80")
    kw = dict(efficiency=0.5, latency=0, host_memory_bw=1e30)
    # the host gather queues its transfers, each at the board's whole x16 link (host_bw),
    # in predict() as in chapter 10's figure
    assert predict(mlp, "K80", 2, 64, strategy="host", **kw).comm_s == \
        pytest.approx(host_gather_seconds(19240, 2, k80.host_bw, 0))
    # the ring, ordered board by board, has a board's whole x16 link per direction too
    assert predict(mlp, "K80", 2, 64, strategy="ring", **kw).comm_s == pytest.approx(19240 / k80.peer_bw)
    assert k80.peer_bw == k80.host_bw == 16e9


def test_k80_host_gather_of_100_mb_on_8_gpus_is_serial_at_the_full_link():
    # 16 transfers of 100 MB, one after another, each at 16 GB/s: 100 ms (+ 16 latencies)
    k80 = costmodel.get_gpu("K80")
    assert host_gather_seconds(100e6, 8, k80.host_bw, 0) == pytest.approx(0.100)
    assert host_gather_seconds(100e6, 8, k80.host_bw) == pytest.approx(0.100 + 16 * 10e-6)


# -- the published figures ---------------------------------------------------------------
def test_published_rows_are_sourced_and_complete():
    from mgpu_lab.predict import published
    rows = published.load()
    multi = [r for r in rows if r["n_gpus"] > 1]
    assert len(rows) == 78 and len(multi) == 54
    assert len({r["source_id"] for r in rows}) == 5
    for r in rows:
        assert r["url"].startswith("https://") and r["table"] and r["date"][:2] == "20"
        assert r["network"] in published.NETWORKS and r["strategy"] in ("host", "ring")
        assert r["precision"] in costmodel.get_gpu(r["gpu"]).tensor_flops or r["precision"] == "fp32"
        assert r["images_per_s"] > 0 and r["batch_per_gpu"] > 0
        assert r["optimizer"] == ("sgd" if r["source_id"] == "tf" else "momentum")
        for column in ("source", "table", "date", "framework_setting", "data", "interconnect"):
            assert r[column].strip(), (column, r)
    # every multi-GPU row has its single-GPU row (same source, network, GPU, batch, precision),
    # but MLPerf's, which publishes whole servers only (8 GPUs)
    key = lambda r: (r["source_id"], r["network"], r["gpu"], r["batch_per_gpu"], r["precision"])  # noqa: E731
    singles = {key(r) for r in rows if r["n_gpus"] == 1}
    assert all(key(r) in singles for r in multi if r["source_id"] != "mlperf-v2.1")
    assert {r["n_gpus"] for r in rows if r["source_id"] == "mlperf-v2.1"} == {8}
    # the figures the catalogue calibrates on are single-GPU ResNet-50 rows of this file
    for g in CATALOGUE.values():
        for precision, cal in g.calibration.items():
            assert cal.carried_from is not None or any(r["gpu"] == g.name and r["n_gpus"] == 1 and r["network"] == "ResNet-50"
                       and r["precision"] == precision and r["batch_per_gpu"] == cal.batch
                       and r["images_per_s"] == cal.images_per_s for r in rows)


def test_every_published_multi_gpu_row_gets_a_prediction(mlp, linear_flops):
    from mgpu_lab.predict import published
    rows = published.load()
    stand_in = {n: mlp for n in published.NETWORKS}  # the real nets take half a minute to build
    out = published.compare(rows, stand_in)
    assert len(out) == len(rows)
    for r, o in zip(rows, out):
        assert o["predicted"] > 0 and o["error"] == pytest.approx(o["predicted"] / r["images_per_s"] - 1)
        assert o["prediction"].n_gpus == r["n_gpus"] and o["prediction"].strategy == r["strategy"]
        fused = r["source_id"] in ("nvidia-dle", "nvidia-dle-tf", "mlperf-v2.1")  # DDP, Horovod
        assert o["buckets"] == (1 if fused else len(mlp.params))
        if r["strategy"] == "host":  # TensorFlow's benchmarks ran plain SGD: no momentum slot
            assert o["prediction"].host_s == pytest.approx(
                host_update_seconds(gradient_bytes(mlp), r["n_gpus"], slots=0))
