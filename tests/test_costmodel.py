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
    with pytest.raises(ValueError, match="host, ring, tree"):
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
    eff = v100.calibration["fp32"].efficiency(v100.fp32_flops)  # the catalogue's calibration
    assert host.efficiency == pytest.approx(eff) and 0.3 < eff < 0.8
    assert host.compute_s == pytest.approx(32e9 / (v100.fp32_flops * eff))
    no_peer = SimpleNamespace(name="no peer link", fp32_flops=1e12, host_bw=1e9, peer_bw=None)
    assert predict(mlp, no_peer, 2, 64, strategy="ring", latency=0).comm_s == \
        pytest.approx(19240 / 1e9)  # falls back to the host link
    assert predict(mlp, no_peer, 2, 64).efficiency == costmodel.DEFAULT_EFFICIENCY  # no calibration
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


def test_k80_host_gather_uses_the_whole_board_link(mlp, linear_flops):
    k80 = costmodel.get_gpu("K80")
    kw = dict(efficiency=0.5, latency=0, host_memory_bw=1e30)
    # the gather's transfers queue, so one at a time has the board's link; a ring keeps both busy
    assert predict(mlp, "K80", 2, 64, strategy="host", **kw).comm_s == pytest.approx(4 * 19240 / (2 * k80.host_bw))
    assert predict(mlp, "K80", 2, 64, strategy="ring", **kw).comm_s == pytest.approx(19240 / k80.peer_bw)


# -- precision, Winograd, calibration --------------------------------------------------
def test_precision_uses_the_tensor_core_peak(mlp, linear_flops):
    a100 = costmodel.get_gpu("A100")
    p = predict(mlp, "A100", 1, 64, strategy="ring", efficiency=0.5, precision="tf32")
    assert p.compute_s == pytest.approx(64e9 / (0.5 * a100.tensor_flops["tf32"]))
    assert p.precision == "tf32"
    with pytest.raises(ValueError, match="no 'tf32' peak"):
        predict(mlp, "P100", 1, 64, precision="tf32")


@pytest.fixture(scope="module")
def resnet50():
    return models.resnet_like(50)


def test_winograd_divides_the_3x3_stride_1_convolutions(resnet50):
    from mgpu_lab.predict.gpus import RN50_FLOPS, RN50_STEP_FLOPS, RN50_WINOGRAD_FLOPS
    assert graph.count_flops(resnet50, 1)["total"] == RN50_FLOPS
    for batch, flops in RN50_STEP_FLOPS.items():  # the catalogue's calibration counts
        assert graph.count_flops(resnet50, batch)["total"] == flops
    assert costmodel.winograd_flops(resnet50, 1) == RN50_WINOGRAD_FLOPS
    # by hand, the first stage's 3x3 conv (64 -> 64 channels, 56 x 56, stride 1) is one of
    # them: 2 * 56*56*64 * 64*9 FLOPs forward, the same again for each gradient
    one = 2 * 56 * 56 * 64 * 64 * 9
    assert RN50_WINOGRAD_FLOPS % one == 0 and RN50_WINOGRAD_FLOPS > 3 * 3 * one
    assert costmodel.effective_flops(resnet50, 2, 4.0) == pytest.approx(
        2 * (RN50_FLOPS - RN50_WINOGRAD_FLOPS * 0.75))
    assert costmodel.WINOGRAD_F2 == 2.25 and costmodel.WINOGRAD_F4 == 4.0


@pytest.mark.parametrize("name, precision", [(g.name, p) for g in CATALOGUE.values() for p in g.calibration])
@pytest.mark.parametrize("winograd", [1.0, 4.0])
def test_calibration_reproduces_its_single_gpu_input(resnet50, name, precision, winograd):
    cal = costmodel.get_gpu(name).calibration[precision]
    p = predict(resnet50, name, 1, cal.batch, strategy="ring", precision=precision, winograd=winograd)
    assert p.images_per_s == pytest.approx(cal.images_per_s, rel=1e-9)
    assert 0 < p.efficiency < 1


# -- the published figures ---------------------------------------------------------------
def test_published_rows_are_sourced_and_complete():
    from mgpu_lab.predict import published
    rows = published.load()
    multi = [r for r in rows if r["n_gpus"] > 1]
    assert len(rows) == 52 and len(multi) == 36
    for r in rows:
        assert r["url"].startswith("https://") and r["table"] and r["date"][:2] == "20"
        assert r["network"] in published.NETWORKS and r["strategy"] in ("host", "ring")
        assert r["precision"] in costmodel.get_gpu(r["gpu"]).tensor_flops or r["precision"] == "fp32"
        assert r["images_per_s"] > 0 and r["batch_per_gpu"] > 0
    # every multi-GPU row has its single-GPU row (same source, network, GPU, batch, precision)
    key = lambda r: (r["source_id"], r["network"], r["gpu"], r["batch_per_gpu"], r["precision"])  # noqa: E731
    singles = {key(r) for r in rows if r["n_gpus"] == 1}
    assert all(key(r) in singles for r in multi)
    # the figures the catalogue calibrates on are single-GPU ResNet-50 rows of this file
    for g in CATALOGUE.values():
        for precision, cal in g.calibration.items():
            assert any(r["gpu"] == g.name and r["n_gpus"] == 1 and r["network"] == "ResNet-50"
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
        assert o["buckets"] == (1 if r["source_id"] == "nvidia-dle" else len(mlp.params))
