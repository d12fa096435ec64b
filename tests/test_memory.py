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
@pytest.mark.integration  # starts worker processes
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


@pytest.mark.integration  # starts worker processes
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



# -- sharding (ZeRO stages 0-3) ---------------------------------------------------------------
def test_shards_are_the_ring_chunks():
    """Device i owns the chunk the ring's reduce-scatter completes on it: (i + 1) mod N."""
    from mgpu_lab.collectives import ring_chunks, simulate_ring_allreduce
    assert [b - a for a, b in ring_chunks(4810, 3)] == [1603, 1603, 1604]
    assert memory.shard_sizes(4810, 3) == [1603, 1604, 1603]
    assert [b - a for a, b in ring_chunks(10, 4)] == [2, 3, 2, 3]
    assert memory.shard_sizes(10, 4) == [3, 2, 3, 2]
    assert memory.shard_sizes(2, 3) == [1, 1, 0]  # fewer numbers than devices: empty shards
    # after the reduce-scatter half of the ring (N - 1 steps), device i's complete chunk
    table = simulate_ring_allreduce([np.zeros(10)] * 4).tables[3]
    done = [[c for c, who in enumerate(row) if len(who) == 4] for row in table]
    assert done == [[1], [2], [3], [0]]


def test_model_state_by_hand_for_uneven_shards(mlp):
    """The digits MLP: P = 64*64 + 64 + 64*10 + 10 = 4,810 over N = 3 devices: chunks of
    1,603, 1,603 and 1,604, device i owning chunk (i + 1) mod 3; its largest layer, fc1,
    holds L = 4,160. Adam: 2 state arrays."""
    assert mlp.n_params == 4810
    assert memory.layer_sizes(mlp) == {"fc1": 4160, "out": 650}
    full, L = 4 * 4810, 4160
    want = {  # stage -> per device (parameters, gradients, optimizer), bytes, by hand
        0: [(full, full, 2 * full)] * 3,
        1: [(full, full, 8 * 1603), (full, full, 8 * 1604), (full, full, 8 * 1603)],
        2: [(full, 4 * (1603 + L), 8 * 1603), (full, 4 * (1604 + L), 8 * 1604),
            (full, 4 * (1603 + L), 8 * 1603)],
        3: [(4 * (1603 + L), 4 * (1603 + L), 8 * 1603), (4 * (1604 + L), 4 * (1604 + L), 8 * 1604),
            (4 * (1603 + L), 4 * (1603 + L), 8 * 1603)]}
    for stage, rows in want.items():
        got = memory.predicted_device_memory(mlp, 3, "adam", stage)
        assert [(d["parameters"], d["gradients"], d["optimizer"]) for d in got] == rows, stage
    # momentum: one array; SGD: none, sharded or not
    assert [d["optimizer"] for d in memory.model_state(mlp, "momentum", 1, 3)] == [4 * 1603, 4 * 1604, 4 * 1603]
    assert {d["optimizer"] for s in range(4) for d in memory.model_state(mlp, "sgd", s, 3)} == {0}
    # an optimizer object is read by its name
    from mgpu_lab.optim import Adam
    assert memory.predicted_device_memory(mlp, 3, Adam(0.01), 1) == memory.model_state(mlp, "adam", 1, 3)


def test_one_device_is_never_sharded(mlp):
    for stage in range(4):
        assert memory.model_state(mlp, "adam", stage, 1) == [
            {"parameters": 4 * 4810, "gradients": 4 * 4810, "optimizer": 8 * 4810}]


def test_estimate_with_sharding_is_the_busiest_device(mlp):
    plain = memory.estimate(mlp, 32, "adam")
    e = memory.estimate(mlp, 32, "adam", sharding=1, n_devices=3)
    assert e["optimizer"] == 8 * 1604  # device 1 holds the largest shard (chunk 2)
    for term in ("parameters", "gradients", "inputs", "activations", "transient", "workspace"):
        assert e[term] == plain[term]  # sharding 1 changes the optimizer state only
    assert e["total"] == plain["total"] - 8 * 4810 + 8 * 1604
    assert memory.estimate(mlp, 32, "adam", 0, 3) == plain  # no sharding: N does not matter
    assert memory.estimate(mlp, 32) == memory.estimate(mlp, 32, "sgd", 0, 1)  # defaults unchanged


def test_split_limits_equal_the_search(cnn):
    budgets = [10_000, 50_000, 300_000, 2_000_000]
    total = lambda n: sum(memory._step_terms(cnn, n).values())  # noqa: E731
    assert memory.split_limits(cnn, budgets) == [memory._largest_fitting(total, b) for b in budgets]
    assert memory.split_limits(cnn, [0])[0] == 0


def test_max_batch_size_with_sharding(mlp):
    cap = 200_000
    for stage in range(4):
        for n in (1, 2, 3, 5):
            g = memory.max_batch_size(mlp, cap, n, "adam", stage)
            m = g // n
            assert g == n * m
            assert memory.estimate(mlp, m, "adam", stage, n)["total"] <= cap
            assert memory.estimate(mlp, m + 1, "adam", stage, n)["total"] > cap
    # stage 1 frees 8 (P - P/N) bytes of Adam state: more samples fit on each device
    assert memory.max_batch_size(mlp, cap, 3, "adam", 1) > memory.max_batch_size(mlp, cap, 3, "adam", 0)


def test_limits_monotone_in_n_with_sharding(mlp):
    for stage in range(4):
        rows = memory.predicted_limits({"mlp": mlp}, ["K80"], range(1, 9), "adam",
                                       reserved_bytes=12 * 2 ** 30 - 400_000, progress=False,
                                       sharding=stage)
        assert [r["n_gpus"] for r in rows] == list(range(1, 9))
        assert all(r["sharding"] == stage for r in rows)
        per = [r["per_gpu_batch"] for r in rows]
        glob = [r["global_batch"] for r in rows]
        assert all(a <= b for a, b in zip(per, per[1:])), (stage, per)
        assert all(a < b for a, b in zip(glob, glob[1:])), (stage, glob)
        if stage == 0:
            assert len(set(per)) == 1  # without sharding the split's limit ignores N
        else:
            assert per[-1] > per[0]  # with it, each GPU keeps less state as N grows
        for r in rows:
            assert r["total"] <= 400_000 < memory.estimate(mlp, r["per_gpu_batch"] + 1, "adam",
                                                          stage, r["n_gpus"])["total"]


@pytest.mark.parametrize("bad", [4, -1, "x", 1.5, True, None])
def test_bad_sharding(mlp, bad):
    msg = r"sharding must be a ZeRO stage 0, 1, 2 or 3 \(0 = none"
    with pytest.raises(ValueError, match=msg):
        memory.check_sharding(bad)
    with pytest.raises(ValueError, match=msg):
        memory.estimate(mlp, 4, sharding=bad, n_devices=2)
    with pytest.raises(ValueError, match=msg):
        memory.predicted_limits({"mlp": mlp}, ["K80"], (1,), progress=False, sharding=bad)
    with pytest.raises(ValueError, match=msg):
        memory.predicted_device_memory(mlp, 2, "adam", bad)


def test_bad_devices_and_optimizer_for_device_memory(mlp):
    with pytest.raises(ValueError, match="n_devices must be >= 1, got 0"):
        memory.predicted_device_memory(mlp, 0, "adam", 1)
    with pytest.raises(ValueError, match="n_devices must be an integer >= 1, got 'two'"):
        memory.predicted_device_memory(mlp, "two", "adam", 1)
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        memory.predicted_device_memory(mlp, 2, "lamb", 1)


def test_limits_cli_sharding(capsys):
    args = ["limits", "--model", "mlp", "--image-size", "8", "--depth", "1", "--width", "16",
            "--gpu", "k80", "--gpus", "1-3", "--optimizer", "adam", "--no-progress"]
    big = models.mlp(n_in=192, hidden=(16,), n_classes=1000)
    usable = 12 * 2 ** 30 - 512 * 2 ** 20
    assert main(args + ["--sharding", "1"]) == 0
    out = capsys.readouterr().out
    assert "sharding 1: optimizer state sharded (ZeRO-1)" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("K80")]
    want = [memory.max_batch_size(big, usable, n, "adam", 1) for n in (1, 2, 3)]
    assert [int(r[5]) for r in rows] == want
    for bad in ("4", "-1", "x"):
        with pytest.raises(SystemExit) as e:
            main(args + ["--sharding", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--sharding" in err and "sharding must be a ZeRO stage 0, 1, 2 or 3" in err


def test_widget_figure_with_sharding():
    from mgpu_lab.figures import widgets
    summary, fig = widgets.limits_figure("V100", 32, 26, 4, "adam", sharding=3)
    model = widgets.network(26, 32)
    per = memory.max_batch_size(model, 16 * 2 ** 30 - 512 * 2 ** 20, 4, "adam", 3) // 4
    assert f"at most {per} images per GPU, a global batch of {4 * per} (predicted)" in summary
    assert "sharding 3 (optimizer state, gradients and parameters sharded" in summary
    assert "sharding 3" in fig.axes[0].get_title() and "predicted" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="sharding must be a ZeRO stage"):
        widgets.limits_figure("V100", 32, 26, 4, "adam", sharding=5)


def test_state_bytes_per_parameter():
    assert [memory.state_bytes_per_parameter("adam", s, 8) for s in range(4)] == [16, 9, 5.5, 2]
    assert [memory.state_bytes_per_parameter("momentum", s, 4) for s in range(4)] == [12, 9, 6, 3]
    assert memory.state_bytes_per_parameter() == 8  # SGD, no sharding: parameters + gradients
    assert {memory.state_bytes_per_parameter("adam", s, 1) for s in range(4)} == {16}


# -- prediction against what the devices hold (the lead's engine.device_memory) ---------------
@pytest.mark.integration  # starts worker processes
@pytest.mark.parametrize("name", ["cnn", pytest.param("mlp", marks=pytest.mark.slow),
                                  pytest.param("logistic", marks=pytest.mark.slow)])
def test_predicted_device_memory_equals_what_the_devices_hold(name, digits):
    """Adam on 3 devices (P never a multiple of 3 here: uneven shards), one step each of
    ring (stage 0: every device updates all) and sharded (ZeRO-1)."""
    from mgpu_lab.optim import Adam
    from mgpu_lab.presets import digits_model
    from mgpu_lab.trainer import DataParallelTrainer
    model = digits_model(name)
    assert model.n_params % 3 != 0
    x, y = digits
    x = x.reshape((len(x),) + model.input_shape)  # the MLPs take flat images
    for strategy, stage in (("ring", 0), ("sharded", 1)):
        with DataParallelTrainer(model.spec, 3, Adam(1e-3), strategy=strategy) as tr:
            tr.step(x[:31], y[:31])  # splits of 11, 10, 10
            held = tr.engine.device_memory()
        predicted = memory.predicted_device_memory(model, 3, "adam", stage)
        assert [{k: d[k] for k in memory.MODEL_STATE} for d in held] == predicted, strategy
    # sharded: Adam's state on each device is its shard's, about 1/N of the ring's
    assert sum(d["optimizer"] for d in predicted) == 8 * model.n_params
