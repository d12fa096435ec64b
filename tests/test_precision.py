"""Precision everywhere (issue 25, section 2): memory per precision (mixed precision as ZeRO
counts it), activation recomputation (Chen et al. 2016), the exchange's bytes, b* per
precision, the 16-bit ring on the pool, and the explorer's and widget's controls."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu_lab import models
from mgpu_lab.predict import algorithms, costmodel, critical, gpus, graph, memory, precision


@pytest.fixture(scope="module")
def mlp():
    return models.mlp(n_in=64, hidden=(64,), seed=0)


@pytest.fixture(scope="module")
def resnet50():
    """The book's ResNet-50-like graph at 224 px (never compiled)."""
    return models.resnet_like(50, image_size=224)


# -- names ---------------------------------------------------------------------------------
def test_bad_precision_names_say_which_are_valid(cnn, mlp):
    valid = "'fp32', 'tf32', 'bf16', 'fp16'"
    calls = [lambda: memory.estimate(cnn, 4, precision="fp8"),
             lambda: memory.max_batch_size(cnn, 10 ** 6, precision="half"),
             lambda: memory.state_bytes_per_parameter("adam", precision="FP16"),
             lambda: memory.predicted_limits({"cnn": cnn}, ["V100"], (1,), progress=False,
                                             precision="mixed"),
             lambda: costmodel.predict(mlp, "V100", 2, 8, wire_precision="float16"),
             lambda: critical.critical_batch_table(wire_precision=None)]
    for call in calls:
        with pytest.raises(ValueError, match=f"unknown precision .*choose one of {valid}"):
            call()
    assert [precision.value_bytes(p) for p in precision.PRECISIONS] == [4, 4, 2, 2]


# -- memory per precision ------------------------------------------------------------------
def test_mixed_precision_memory_counted_by_hand(cnn):
    P = cnn.n_params
    e32 = memory.estimate(cnn, 16, "momentum")
    e16 = memory.estimate(cnn, 16, "momentum", precision="fp16")
    # 16-bit weights and gradients; float32 master weights + velocity under the optimizer
    assert (e16["parameters"], e16["gradients"], e16["optimizer"]) == (2 * P, 2 * P, 8 * P)
    assert (e32["parameters"], e32["gradients"], e32["optimizer"]) == (4 * P, 4 * P, 4 * P)
    assert e16["inputs"] == 16 * (2 * 64 + 4)  # 8x8 16-bit image + int32 label
    assert e16["workspace"] == 8 * 9 * 64 * 2  # the 2nd conv's unrolled image, 16-bit
    # every buffer the step keeps or makes is float32 in the graph: exactly half in 16 bits
    for term in ("activations", "transient"):
        assert 2 * e16[term] == e32[term] > 0
    # tf32 stores float32; bf16 stores 16 bits, as fp16
    assert memory.estimate(cnn, 16, "momentum", precision="tf32") == e32
    assert memory.estimate(cnn, 16, "momentum", precision="bf16") == e16
    assert memory.max_batch_size(cnn, 10 ** 6, precision="fp16") > \
        memory.max_batch_size(cnn, 10 ** 6)


def test_adam_in_mixed_precision_keeps_16_bytes_per_parameter(cnn):
    P = cnn.n_params
    for p in precision.PRECISIONS:
        assert memory.state_bytes_per_parameter("adam", precision=p) == 16
    # ZeRO's 2 + 2 + 12 (Rajbhandari et al. 2020), and its stages over N = 8
    assert memory.model_state(cnn, "adam", precision="fp16")[0] == \
        {"parameters": 2 * P, "gradients": 2 * P, "optimizer": 12 * P}
    assert [memory.state_bytes_per_parameter("adam", s, 8, "fp16") for s in range(4)] == \
        [16, 4 + 12 / 8, 2 + 14 / 8, 16 / 8]
    # any optimizer: 2 + 2 + (4 + 4k) = 4 + 4 + 4k, the float32 total split otherwise
    for opt in memory.OPTIMIZER_SLOTS:
        assert memory.state_bytes_per_parameter(opt, precision="bf16") == \
            memory.state_bytes_per_parameter(opt)


def test_resnet50_256_per_16gb_v100_fits_in_mixed_precision(resnet50):
    """NVIDIA trains ResNet-50 v1.5 at 256 images per V100 16GB in mixed precision and 112
    in float32 (DeepLearningExamples' configs.yml, the batches of the V100 calibrations)."""
    v100 = gpus.get_gpu("V100")
    usable = gpus.usable_bytes(v100)
    for prec, published in (("fp16", 256), ("fp32", 112)):
        assert v100.calibration[prec].batch == published
        margin = usable - memory.estimate(resnet50, published, "momentum", precision=prec)["total"]
        limit = memory.max_batch_size(resnet50, usable, optimizer="momentum", precision=prec)
        assert margin > 0 and limit >= published, (prec, margin, limit)
    fp16_margin = usable - memory.estimate(resnet50, 256, "momentum", precision="fp16")["total"]
    assert 0.2 < fp16_margin / usable < 0.6  # fits, with room to spare but not most of it
    # in float32 the same 256 would not fit: mixed precision is what makes it fit
    assert memory.estimate(resnet50, 256, "momentum")["total"] > usable


# -- recomputation -------------------------------------------------------------------------
def test_recomputed_activations_by_hand():
    assert memory.recomputed_activations([]) == 0
    # L = 100 equal results: 10 checkpoints + the 9 others of one segment of 10
    assert memory.recomputed_activations([1] * 100) == 19
    # L = 10: 4 segments of 3, 3, 2, 2 results: checkpoints 3 + 6 + 8 + 10, largest rest 4 + 5
    assert memory.recomputed_activations(list(range(1, 11))) == 27 + 9


@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 2000), c=st.integers(1, 10 ** 6))
def test_recomputation_keeps_about_sqrt_L(L, c):
    k = math.ceil(math.sqrt(L))
    kept = memory.recomputed_activations([c] * L)
    assert kept == c * (k + math.ceil(L / k) - 1)
    assert kept <= c * (2 * math.sqrt(L) + 1) and kept <= c * L


def test_recompute_in_the_estimate_and_the_limits(resnet50):
    sim = memory.simulate(resnet50, 2)
    assert sum(sim.kept) == sim.activations and len(sim.kept) > 50
    e = memory.estimate(resnet50, 2, recompute=True)
    assert e["activations"] == memory.recomputed_activations(sim.kept) < sim.activations / 2
    plain = memory.estimate(resnet50, 2)
    assert {t: e[t] for t in memory.TERMS if t != "activations"} == \
        {t: plain[t] for t in memory.TERMS if t != "activations"}
    usable = gpus.usable_bytes("V100")
    limits = {(p, rc): memory.max_batch_size(resnet50, usable, optimizer="momentum",
                                             precision=p, recompute=rc)
              for p in ("fp32", "fp16") for rc in (False, True)}
    assert limits["fp32", True] > 2 * limits["fp32", False]
    assert limits["fp16", True] > 2 * limits["fp16", False] > 3 * limits["fp32", False]
    for (p, rc), n in limits.items():  # each the largest that fits
        assert memory.estimate(resnet50, n, "momentum", precision=p, recompute=rc)["total"] \
            <= usable < memory.estimate(resnet50, n + 1, "momentum", precision=p,
                                        recompute=rc)["total"]


def test_recompute_adds_one_forward_pass_to_the_step(mlp):
    counts = graph.count_flops(mlp, 4096)
    for overlap in (False, True):  # 4096 samples per GPU, no latency: compute-bound
        # the FLOP count alone (roofline=False), where the forward pass's time is its share
        p0, p1 = (costmodel.predict(mlp, "V100", 4, batch_per_gpu=4096, strategy="ring",
                                    overlap=overlap, latency=0, recompute=rc, roofline=False)
                  for rc in (False, True))
        forward = p0.compute_s * counts["forward"] / counts["total"]
        assert p1.compute_s == pytest.approx(p0.compute_s + forward, rel=1e-12)
        assert p1.step_s == pytest.approx(p0.step_s + forward, rel=1e-9)
        assert p1.comm_s == p0.comm_s and p1.recompute and not p0.recompute
    # with the roofline per kernel: the forward kernels' time once more, less than the step
    p0, p1 = (costmodel.predict(mlp, "V100", 4, batch_per_gpu=4096, strategy="ring",
                                latency=0, recompute=rc) for rc in (False, True))
    assert p0.compute_s < p1.compute_s < 2 * p0.compute_s


# -- communication -------------------------------------------------------------------------
def test_16_bit_gradients_halve_every_exchange(mlp):
    P = mlp.n_params
    assert costmodel.gradient_bytes(mlp, "fp16") == 2 * P == costmodel.gradient_bytes(mlp) / 2
    for s in ("ring", "sharded", "hierarchical"):
        assert algorithms.bytes_per_device(s, 2 * P, 8, 4) == \
            algorithms.bytes_per_device(s, 4 * P, 8, 4) / 2
    for s in algorithms.ALGORITHMS:
        p32, p16 = (costmodel.predict(mlp, "V100", 8, batch_per_gpu=32, strategy=s, latency=0,
                                      wire_precision=w) for w in ("fp32", "bf16"))
        # the host's own stacking and update stay float32 (the master weights)
        assert p16.comm_s - p16.host_s == pytest.approx((p32.comm_s - p32.host_s) / 2)
        assert p16.host_s == p32.host_s and p16.compute_s == p32.compute_s
        assert p16.wire_precision == "bf16"


def test_b_star_per_precision_moves_as_the_model_says():
    rows = {(p, w): {r["gpu"]: r for r in critical.critical_batch_table(precision=p,
                                                                       wire_precision=w)}
            for p, w in (("fp32", "fp32"), ("fp16", "fp32"), ("fp16", "fp16"))}
    assert "K80" in rows["fp32", "fp32"] and "K80" not in rows["fp16", "fp16"]  # no FP16 peak
    for g, r16 in rows["fp16", "fp16"].items():
        r32, r16_32 = rows["fp32", "fp32"][g], rows["fp16", "fp32"][g]
        for link in (*critical.LINKS, critical.ONE_RING):
            assert r16[link] == pytest.approx(2 / 3 * r16["rate"] / r16[f"bw[{link}]"])
            assert r16[link] == pytest.approx(r16_32[link] / 2)  # half the bytes
            # the Tensor Cores' rate raises it in proportion
            assert r16_32[link] / r32[link] == pytest.approx(r16["rate"] / r32["rate"])
        assert r16["rate"] > 2 * r32["rate"]  # so mixed precision raises b* on every link


def test_the_cost_model_meets_b_star_with_16_bit_gradients():
    from types import SimpleNamespace
    mlp = models.mlp(n_in=256, hidden=(256, 256), seed=0)  # the graph test_critical uses
    P, per_sample = mlp.n_params, graph.count_flops(mlp, 1)["total"]
    gpu = SimpleNamespace(name="toy", fp32_flops=1e12, host_bw=1e9, peer_bw=2e9)
    N, rate = 8, 1e12 * 0.5
    b32 = critical.critical_batch(rate, gpu.peer_bw, per_sample, P, n_gpus=N)
    b16 = critical.critical_batch(rate, gpu.peer_bw, per_sample, P, n_gpus=N, value_bytes=2)
    assert b16 == pytest.approx(b32 / 2)
    p = costmodel.predict(mlp, gpu, N, batch_per_gpu=round(b16), strategy="ring",
                          efficiency=0.5, latency=0, winograd=1, wire_precision="fp16")
    assert p.compute_s == pytest.approx(p.comm_s, rel=0.02)
    share = critical.comm_share(rate, gpu.peer_bw, round(b16), N, P, per_sample, value_bytes=2)
    assert share == pytest.approx(p.comm_s / (p.compute_s + p.comm_s), rel=1e-3)
    assert 0.49 < share < 0.51


# -- the explorer and the widget -----------------------------------------------------------
@pytest.fixture(scope="module")
def small_grid():
    """Chapter 7's explorer data for one small network and two GPUs (not cached)."""
    from mgpu_lab.figures import explorers
    return explorers.batch_limits_data(sizes=(32,), depths=(26,), kinds=["V100", "K80"],
                                       cache=False)


def test_the_explorer_grid_is_the_memory_model_at_every_precision_and_recomputation(small_grid):
    from mgpu_lab.figures import explorers
    d, model = small_grid, models.resnet_like(26, image_size=32)
    assert d["axes"]["precision"] == ["fp32", "fp16"] and d["axes"]["recompute"] == [False, True]
    for gpu in ("V100", "K80"):
        for p in ("fp32", "fp16"):
            for rc in (False, True):
                for o, stage, n in (("momentum", 0, 1), ("adam", 3, 8)):
                    at = dict(gpu=gpu, image_size=32, depth=26, optimizer=o, sharding=stage,
                              precision=p, recompute=rc, n_gpus=n)
                    total = memory.max_batch_size(model, gpus.usable_bytes(gpu), n, o, stage,
                                                  p, rc)
                    per = d["per_gpu"][explorers._flat_index(d["axes"], **at)]
                    assert per == total // n, at
                    est = memory.estimate(model, max(per, 1), o, stage, n, p, rc)
                    assert explorers.limits_parts(d, **at) == explorers.memory_parts(est), at
    html = explorers.batch_limits(gpu="K80", image_size=32, depth=26, precision="fp16",
                                  recompute=True, data=d).html
    assert 'name="precision"' in html and 'name="recompute"' in html
    assert ">fp16 or bf16, mixed (2 bytes)</option>" in html and "Chen et al." in html
    assert len(html) < 100_000


def test_the_pages_script_shows_what_the_library_computed(small_grid, tmp_path):
    """book/_static/explorer-batch-limits.js, run in node on the grid: for each setting it
    shows the per-GPU limit and the five parts that explorers.limits_parts gives."""
    import json
    import shutil
    import subprocess
    from pathlib import Path
    from mgpu_lab.figures import explorers
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's script is tested in the browser tier")
    js = Path(__file__).resolve().parent.parent / "book" / "_static" / "explorer-batch-limits.js"
    (tmp_path / "d.json").write_text(json.dumps(small_grid))
    harness = tmp_path / "run.js"
    harness.write_text("""
let update; global.mgpuExplorers = {register: (kind, f) => { update = f; }};
require(process.argv[2]);
const d = JSON.parse(require('fs').readFileSync(process.argv[3], 'utf8'));
const order = Object.keys(d.axes), shown = {};
const m = {data: d, show: (k, v) => { shown[k] = v; }, draw: (spec, sets) => sets,
           at: s => order.reduce((i, a) => i * d.axes[a].length + d.axes[a].indexOf(s[a]), 0)};
const out = JSON.parse(process.argv[4]).map(s => {
  for (const k in shown) delete shown[k];
  const sets = update(m, s);
  return {shown: Object.assign({}, shown), rows: sets.table.length};
});
console.log(JSON.stringify(out));
""")
    settings_ = [dict(gpu=g, image_size=32, depth=26, optimizer=o, sharding=st_, precision=p,
                      recompute=rc, n_gpus=n)
                 for g, o, st_, p, rc, n in (("V100", "momentum", 0, "fp16", True, 4),
                                              ("K80", "adam", 2, "fp16", False, 8),
                                              ("V100", "sgd", 0, "fp32", True, 1),
                                              ("K80", "momentum", 1, "fp32", False, 2))]
    out = json.loads(subprocess.run([node, str(harness), str(js), str(tmp_path / "d.json"),
                                     json.dumps(settings_)], check=True, capture_output=True,
                                    text=True, timeout=60).stdout)
    for s, o in zip(settings_, out):
        per = small_grid["per_gpu"][explorers._flat_index(small_grid["axes"], **s)]
        assert o["shown"]["per_gpu"] == per and o["shown"]["global_batch"] == s["n_gpus"] * per
        parts = explorers.limits_parts(small_grid, **s)
        assert [o["shown"][f"bytes_{p}"] for p in explorers.MEMORY_PARTS] == parts, s
        assert o["shown"]["precision"] == explorers.PRECISION_LABELS[s["precision"]]
        assert o["shown"]["recompute"] == explorers.RECOMPUTE_LABELS[s["recompute"]]


def test_the_widget_and_the_lab_chart_take_precision_and_recomputation(small_grid):
    import matplotlib.pyplot as plt
    from mgpu_lab.figures import explorers, widgets
    assert [p for _, p in widgets.PRECISION_CHOICES] == list(precision.PRECISIONS)
    model = widgets.network(26, 32)
    for p, rc in (("bf16", True), ("tf32", False)):
        summary, fig = widgets.limits_figure("V100", 32, 26, 2, "momentum", 0, p, rc)
        plt.close(fig)
        per = memory.max_batch_size(model, gpus.usable_bytes("V100"), 2, "momentum", 0, p,
                                    rc) // 2
        assert f"at most {per} images per GPU" in summary and p in summary
        assert ("recomputation on" if rc else "recomputation off") in summary
    e = explorers.batch_limits(gpu="V100", image_size=32, depth=26, n_gpus=2,
                               precision="fp16", recompute=True, data=small_grid)
    per = memory.max_batch_size(model, gpus.usable_bytes("V100"), 2, "momentum", 0, "fp16",
                                True) // 2
    assert f"at most {per:,} images per GPU" in e.text
    params = {p["name"]: p["value"] for p in e.spec["params"]}  # the lab chart starts there
    assert (params["precision"], params["recompute"]) == ("fp16", True)
    at = dict(gpu="V100", image_size=32, depth=26, optimizer="momentum", sharding=0,
              precision="fp16", recompute=True, n_gpus=2)
    i = explorers._flat_index(small_grid["axes"], **at)
    assert e.spec["data"]["values"][0]["per_gpu"][i] == per
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        widgets.limits_figure("V100", 32, 26, 2, "momentum", 0, "fp8")


# -- the 16-bit ring on the pool -------------------------------------------------------------
def test_ring16_names_and_the_transports_that_carry_it(cnn):
    from types import SimpleNamespace
    from mgpu_lab.engines import strategies as S
    from mgpu_lab.engines.device import Device
    assert S.get_strategy("ring16").wire_dtype == "float16"
    assert S.RingAllReduce().wire_dtype == "float32"
    assert repr(S.get_strategy("ring16")) == "RingAllReduce(wire_dtype='float16')"
    with pytest.raises(ValueError, match="wire_dtype must be one of float32, float16"):
        S.RingAllReduce(wire_dtype="float64")
    mpi_like = SimpleNamespace(rank=0, size=2)  # a link without wire_dtype carries float32
    with pytest.raises(ValueError, match="sends float16 between devices; this transport "
                                         "carries float32 only"):
        Device(0, 2, cnn, S.RingAllReduce16(), mpi_like)


@pytest.mark.integration  # one pool start: about 2 s on the idle 2-core VM
def test_the_16_bit_ring_on_the_pool_halves_the_bytes_and_stays_close(digits):
    """One pool of 2 devices, 20 steps of the digits CNN with float16 on the wire, against
    the float32 host gather (serial, no transport) from the same start and batches."""
    from mgpu_lab.optim import Momentum
    from mgpu_lab.presets import digits_model
    from mgpu_lab.trainer import DataParallelTrainer
    x, y = digits
    model = digits_model("cnn")
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(x), 64, replace=False) for _ in range(20)]
    flat = lambda tr: np.concatenate([np.ravel(v) for v in tr.model.get_values()])  # noqa: E731
    with DataParallelTrainer(model.spec, n_devices=2, optimizer=Momentum(0.05),
                             engine="serial") as ref:
        for i in batches:
            ref.step(x[i], y[i])
        want = flat(ref)
    with DataParallelTrainer(model.spec, n_devices=2, optimizer=Momentum(0.05),
                             engine="local", strategy="ring16") as tr:
        for i in batches:
            tr.step(x[i], y[i])
            sent = [m["sent"] for m in tr.engine.last_bytes]
            # each device sends half the gradient's values, 2 bytes each: half of float32's
            assert sent == [algorithms.bytes_per_device(
                "ring", costmodel.gradient_bytes(model, "fp16"), 2)] * 2 == \
                [algorithms.bytes_per_device("ring", costmodel.gradient_bytes(model), 2) / 2] * 2
        replicas = tr.engine.device_parameters()
        got = flat(tr)
    assert np.array_equal(replicas[0], replicas[1])  # every device ran the same update
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 1e-6 < rel < 1e-2, rel  # rounded on the wire, yet close to float32 after 20 steps


def test_the_limits_command_takes_precision_and_recomputation(capsys):
    from mgpu_lab.cli import main
    args = ["limits", "--model", "mlp", "--image-size", "8", "--depth", "1", "--width", "16",
            "--gpus", "1", "--gpu", "k80", "--no-progress", "--optimizer", "adam"]
    net = models.mlp(n_in=192, hidden=(16,), n_classes=1000)  # what those arguments build
    cap = 12 * 2 ** 30 - 512 * 2 ** 20
    for extra, p, rc in (([], "fp32", False), (["--precision", "bf16", "--recompute"], "bf16", True)):
        assert main(args + extra) == 0
        out = capsys.readouterr().out
        assert f"precision {p}" in out and ("recomputation" in out) == rc
        per = memory.max_batch_size(net, cap, optimizer="adam", precision=p, recompute=rc)
        row = next(line.split() for line in out.splitlines() if line.startswith("K80"))
        assert row[3:5] == ["1", str(per)]
    with pytest.raises(SystemExit):
        main(args + ["--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
