"""The cost model's formulas on hand-computed cases, and how predict() puts them together."""
from types import SimpleNamespace

import pytest

from mgpu_lab import models
from mgpu_lab.predict import costmodel, graph
from mgpu_lab.predict.costmodel import (comm_seconds, compute_seconds, gradient_bytes, host_gather_seconds,
                                largest_split, predict, ring_allreduce_seconds, scaling, step_seconds)

# A made-up GPU with round numbers, so every expected value below is worked out by hand.
TOY = SimpleNamespace(name="toy", fp32_flops=1e12, host_bw=1e9, peer_bw=1e10)


@pytest.fixture(scope="module")
def mlp():
    return models.mlp(n_in=64, hidden=(64,), seed=0)  # never compiled here: only counted


@pytest.fixture
def linear_flops(monkeypatch):
    """count_flops -> exactly 1 GFLOP per sample, so compute times are easy to work out."""
    monkeypatch.setattr(graph, "count_flops", lambda model, b: {"total": 10 ** 9 * b})


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
    # 2 * 4 GPUs * 1 MB / 10 GB/s + 10 us = 800 us + 10 us
    assert host_gather_seconds(1e6, 4, 1e10, 1e-5) == pytest.approx(810e-6)
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
    with pytest.raises(ValueError, match="host, ring"):
        comm_seconds("tree", 1e6, 4, 1e10, 1e11)


def test_step_seconds_with_and_without_overlap():
    assert step_seconds(3.0, 2.0) == 5.0
    assert step_seconds(3.0, 2.0, overlap=True) == 3.0
    assert step_seconds(1.0, 2.0, overlap=True) == 2.0


def test_predict_host_gather_by_hand(mlp, linear_flops):
    p = predict(mlp, TOY, 4, 64, strategy="host", efficiency=0.5, latency=1e-5)
    P = 19240  # bytes of gradients
    assert (p.split, p.flops) == (16, 16 * 10 ** 9)
    assert p.compute_s == pytest.approx(16e9 / 0.5e12)  # 32 ms
    assert p.comm_s == pytest.approx(2 * 4 * P / 1e9 + 1e-5)  # 163.92 us
    assert p.step_s == pytest.approx(p.compute_s + p.comm_s)
    assert p.images_per_s == pytest.approx(64 / p.step_s)
    one = 64e9 / 0.5e12 + 2 * P / 1e9 + 1e-5  # the same batch on one GPU
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
    q = predict(mlp, slow, 2, 64, overlap=True, efficiency=0.5, latency=0)
    assert q.comm_s == pytest.approx(4 * 19240 / 1e5)  # 0.77 s: more than compute (64 ms)
    assert q.step_s == q.comm_s  # with overlap the slower one sets the pace


def test_shared_cores_multiply_compute_by_waves(mlp, linear_flops):
    # 4 devices pinned round-robin on 2 cores: each core runs two splits of 16, one after the other
    kw = dict(efficiency=1.0, latency=0, cores=2)
    assert predict(mlp, TOY, 4, 64, **kw).compute_s == pytest.approx(2 * 16e9 / 1e12)
    assert predict(mlp, TOY, 3, 64, **kw).compute_s == pytest.approx(2 * 22e9 / 1e12)
    assert predict(mlp, TOY, 2, 64, **kw).compute_s == pytest.approx(32e9 / 1e12)
    fast = SimpleNamespace(name="free comm", fp32_flops=1e12, host_bw=1e30, peer_bw=1e30)
    assert predict(mlp, fast, 4, 64, **kw).speedup == pytest.approx(2.0)  # capped by the cores
    assert predict(mlp, fast, 4, 64, efficiency=1.0, latency=0).speedup == pytest.approx(4.0)


def test_predict_counts_flops_on_the_real_graph(mlp):
    p = predict(mlp.spec, TOY, 3, 10)  # a spec is rebuilt; splits 4, 3, 3
    assert p.flops == graph.count_flops(mlp, 4)["total"] > 0
    assert p.compute_s == pytest.approx(p.flops / (TOY.fp32_flops * costmodel.DEFAULT_EFFICIENCY))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_gpus=0, batch_size=8), "n_gpus must be an integer >= 1"),
    (dict(n_gpus=True, batch_size=8), "n_gpus must be an integer >= 1"),
    (dict(n_gpus=4, batch_size=3), "every GPU needs at least one sample"),
    (dict(n_gpus=2, batch_size=8, strategy="tree"), "unknown strategy 'tree'"),
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
    host = predict(mlp, "V100", 2, 64, strategy="host", latency=0)
    ring = predict(mlp, "v100", 2, 64, strategy="ring", latency=0)
    assert host.gpu == ring.gpu == "V100"
    assert host.comm_s == pytest.approx(2 * 2 * 19240 / v100.host_bw)
    assert ring.comm_s == pytest.approx(2 * 1 / 2 * 19240 / v100.peer_bw)
    assert host.compute_s == pytest.approx(32e9 / (v100.fp32_flops * costmodel.DEFAULT_EFFICIENCY))
    no_peer = SimpleNamespace(name="no peer link", fp32_flops=1e12, host_bw=1e9, peer_bw=None)
    assert predict(mlp, no_peer, 2, 64, strategy="ring", latency=0).comm_s == \
        pytest.approx(19240 / 1e9)  # falls back to the host link
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
