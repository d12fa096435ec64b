"""mgpu_lab.predict.memory: the estimate against Theano's profiler, batch limits, simulated device
memory in DevicePool, the presets, the limits CLI and figures."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu_lab import models
from mgpu_lab.figures import plots
from mgpu_lab.measure import memory_check
from mgpu_lab.predict import memory
from mgpu_lab.cli import main
from mgpu_lab.engines.local import DevicePool
from mgpu_lab.errors import DeviceOutOfMemory


@pytest.fixture(scope="module")
def mlp():
    return models.mlp(n_in=64, hidden=(64,), seed=0)


@pytest.fixture(scope="module")
def deep96():
    """A deeper, narrow residual CNN at 96 px: 6 convs, 4 pools, average-pool head."""
    return models.cnn(image_size=96, channels=3, width=4, depth=6, residual=True, head="avg", seed=0)


# -- the estimate against Theano's own measurement ---------------------------------------
def test_estimate_within_10_percent_of_theanos_profiler(mlp, cnn, deep96):
    nets = {"mlp 64-64-10": mlp, "cnn 8px": cnn, "resnet-ish 96px": deep96}
    sizes = {"mlp 64-64-10": (128, 512, 2048), "cnn 8px": (16, 64, 256),
             "resnet-ish 96px": (4, 16, 32)}
    rows = memory_check.compare_with_profiler(nets, sizes)
    print("\nnet               batch   estimate   profiled   error")
    for r in rows:
        print(f"{r['net']:16s} {r['batch']:6d} {r['estimate']:10,d} {r['profiled']:10,d} "
              f"{r['error_pct']:+6.2f}%")
    assert len(rows) == 9
    assert all(r["profiled"] > 64 * 1024 for r in rows)  # far above the profiler's 1 KB rounding
    assert all(abs(r["error_pct"]) <= 10.0 for r in rows), rows


# -- the named terms ------------------------------------------------------------------------
def test_estimate_terms(cnn):
    e = memory.estimate(cnn, 16)
    assert list(e) == list(memory.TERMS) + ["total"]
    assert e["total"] == sum(e[t] for t in memory.TERMS)
    assert e["parameters"] == e["gradients"] == 4 * cnn.n_params
    assert e["inputs"] == 16 * (4 * 64 + 4)  # 8x8 float32 image + int32 label
    # kept for backward: per conv layer its pre-ReLU sum and its output, (16, 8, 8, 8) each
    assert e["activations"] >= 4 * 16 * 8 * 8 * 8 * 4
    # one image unrolled by the 2nd conv: (Cin*3*3, 8*8) float32
    assert e["workspace"] == 8 * 9 * 64 * 4
    p = 4 * cnn.n_params
    assert [memory.estimate(cnn, 16, o)["optimizer"] for o in ("sgd", "momentum", "adam")] == [0, p, 2 * p]


def test_activations_grow_linearly_and_the_rest_does_not(cnn):
    e1, e2, e4 = (memory.estimate(cnn, b) for b in (16, 32, 64))
    # affine in the batch: a per-sample part plus a few scalars (the loss's sample count)
    assert e4["activations"] - e1["activations"] == 3 * (e2["activations"] - e1["activations"])
    assert e4["activations"] == pytest.approx(4 * e1["activations"], rel=1e-3)
    assert e4["inputs"] == 4 * e1["inputs"]
    for fixed in ("parameters", "gradients", "optimizer", "workspace"):
        assert e4[fixed] == e1[fixed]


def test_unknown_optimizer(cnn):
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; known: sgd, momentum, adam"):
        memory.estimate(cnn, 4, optimizer="rmsprop")


def test_estimate_never_compiles(monkeypatch):
    """A 152-layer ResNet at 224 px is estimated from the graph alone."""
    from mgpu_lab._theano import theano

    def no_compiling(*a, **k):
        raise AssertionError("estimate must not compile")
    monkeypatch.setattr(theano, "function", no_compiling)
    net = models.resnet_like(152)
    e = memory.estimate(net, 4)
    assert e["activations"] > 4 * 50 * 2 ** 20  # tens of MiB per 224 px image
    # ResNet-152 (torchvision: 60,192,808 with batch norm): our convs have biases instead
    # of BN's two per channel, so ours + one per conv channel = theirs.
    conv_channels = sum(p.get_value().size for p in net.params if p.name.endswith(".b")) - 1000
    assert net.n_params + conv_channels == 60_192_808


# -- max_batch_size --------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(capacity=st.integers(min_value=1, max_value=4_000_000))
def test_max_batch_size_is_the_largest_that_fits(mlp, capacity):
    m = memory.max_batch_size(mlp, capacity)
    if m == 0:
        assert memory.estimate(mlp, 1)["total"] > capacity
    else:
        assert memory.estimate(mlp, m)["total"] <= capacity < memory.estimate(mlp, m + 1)["total"]
    assert memory.max_batch_size(mlp, capacity, n_devices=3) == 3 * m


@pytest.mark.parametrize("total", [lambda n: 1000 + 7 * n, lambda n: 1000 + n * n,
                                   lambda n: 1000 + 50 * n + (400 if n > 30 else 0)])
def test_largest_fitting_search(total):
    for cap in (999, 1007, 1200, 5000, 123_456):
        want = max([0] + [n for n in range(1, 20_000) if total(n) <= cap])
        assert memory._largest_fitting(total, cap) == want


def test_bad_device_count(mlp):
    with pytest.raises(ValueError, match="n_devices must be >= 1"):
        memory.max_batch_size(mlp, 10 ** 6, n_devices=0)


# -- simulated device memory in DevicePool ---------------------------------------------------
def test_pool_refuses_a_split_that_does_not_fit_before_any_work(cnn, digits):
    x, y = digits
    capacity = memory.estimate(cnn, 10)["total"]  # room for a split of 10 samples
    values = cnn.get_values()
    before = [v.copy() for v in values]
    with DevicePool(cnn.spec, 2, memory_bytes=capacity) as pool:
        grads_buffer = pool._bufs["grads"].array  # what the workers write, row per device
        with pytest.raises(DeviceOutOfMemory) as err:
            pool.step(values, x[:30], y[:30])  # splits of 15 and 15
        e = err.value
        needed = memory.estimate(cnn, 15)["total"]
        assert (e.device, e.needed, e.memory_bytes, e.largest_fit) == (0, needed, capacity, 10)
        msg = str(e)
        for part in ("device 0", f"{needed:,} bytes", f"{capacity:,} bytes",
                     "the largest split that fits is 10 samples"):
            assert part in msg
        assert not grads_buffer.any()  # no device computed anything
        assert all(np.array_equal(a, b) for a, b in zip(values, before))
        ok = pool.step(values, x[:20], y[:20])  # 10 + 10 fits, and the pool still works
        assert ok.split_sizes == [10, 10] and grads_buffer.any()


def test_measured_limits_on_two_devices(cnn):
    capacity = memory.estimate(cnn, 12)["total"]
    (row,) = memory_check.measured_limits(cnn.spec, capacity, (2,), progress=False)
    assert row["global_batch"] == row["predicted"] == 24
    assert row["per_device_batch"] == 12
    assert row["replicated_bytes"] == 2 * 4 * cnn.n_params
    # one device with both devices' memory holds the parameters once, so it fits more
    assert row["one_big_device"] > row["global_batch"]


# -- predicted limits, CLI, figures -----------------------------------------------------------
def test_predicted_limits(mlp):
    rows = memory.predicted_limits({"mlp": mlp}, ["K80", "v100"], (1, 2, 4), optimizer="sgd",
                                   reserved_bytes=2 ** 30, progress=False)
    assert [(r["gpu"], r["n_gpus"]) for r in rows] == [
        ("K80", 1), ("K80", 2), ("K80", 4), ("V100", 1), ("V100", 2), ("V100", 4)]
    k80 = memory.max_batch_size(mlp, 11 * 2 ** 30)
    assert [r["global_batch"] for r in rows[:3]] == [k80, 2 * k80, 4 * k80]
    assert all(r["total"] <= (r["memory_gib"] - 1) * 2 ** 30 for r in rows)


def test_limits_cli(capsys):
    args = ["limits", "--model", "mlp", "--image-size", "8", "--depth", "1", "--width", "16",
            "--gpus", "1-2", "--no-progress"]
    assert main(args + ["--gpu", "k80"]) == 0
    out = capsys.readouterr().out
    # defaults: momentum state on every GPU, 512 MiB reserved per GPU; both said in the output
    per = memory.max_batch_size(models.mlp(n_in=192, hidden=(16,), n_classes=1000),
                                12 * 2 ** 30 - 512 * 2 ** 20, optimizer="momentum")
    assert "per-GPU batch" in out and "global batch" in out
    assert "optimizer momentum" in out and "512 MiB reserved per GPU" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("K80")]
    # GPU, memory (2 words), n GPUs, per-GPU batch, global batch, ...
    assert [r[3:6] for r in rows] == [["1", str(per), str(per)], ["2", str(per), str(2 * per)]]
    assert main(args + ["--gpu", "X100"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU 'X100'" in err and "V100" in err and "H100" in err


def test_predicted_limits_default_to_momentum_and_a_reservation(mlp):
    row = memory.predicted_limits({"mlp": mlp}, ["K80"], (1,), progress=False)[0]
    assert (row["update_rule"], row["reserved_bytes"]) == ("momentum", 512 * 2 ** 20)
    assert row["optimizer"] == 4 * mlp.n_params  # momentum: one array of state per weight
    assert row["per_gpu_batch"] == memory.max_batch_size(mlp, 12 * 2 ** 30 - 512 * 2 ** 20,
                                                         optimizer="momentum")
    assert row["total"] <= 12 * 2 ** 30 - 512 * 2 ** 20


def test_figures(mlp):
    rows = memory.predicted_limits({"mlp": mlp}, ["K80", "H100"], (1, 2), progress=False)
    fig = plots.batch_limits(rows)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "number of GPUs" and "images" in ax.get_ylabel()
    assert "predicted" in fig._suptitle.get_text()
    assert any("predicted by mgpu_lab.predict.memory" in t.get_text() for t in ax.texts)
    assert len(ax.get_lines()) == 3  # two GPU kinds + the chapter's claim
    fig2 = plots.memory_breakdown({b: memory.estimate(mlp, b) for b in (8, 16)},
                                  capacity=(10 ** 6, "1 MB device"))
    ax2 = fig2.axes[0]
    assert "MiB" in ax2.get_ylabel() and ax2.get_title()
    assert any("predicted" in t.get_text() for t in ax2.texts)

