"""The cost model's roofline (issue 25, section 1): bytes per kernel from the graph, the
memory bandwidth of every catalogue GPU, the calibration of two efficiencies, the held-out
split, and the H100 against a published figure (mgpu_lab.predict.costmodel, graph, gpus,
validation). The ResNet-50 graph is built once (a few seconds); nothing is compiled."""
import dataclasses
import re
from types import SimpleNamespace

import pytest

from mgpu_lab import models
from mgpu_lab.predict import costmodel, gpus, graph, published, validation
from mgpu_lab.predict.costmodel import predict, roofline_seconds, step_compute

GB = 1e9


@pytest.fixture(scope="module")
def mlp():
    return models.mlp(n_in=4, hidden=(3,), n_classes=2, seed=0)


@pytest.fixture(scope="module")
def resnet50():
    return published.NETWORKS["ResNet-50"]()


# -- the roofline itself --------------------------------------------------------------
def test_each_kernel_takes_the_larger_of_its_two_terms():
    # kernel 1: 20 GFLOP, 1 GB; kernel 2: 1 GFLOP, 10 GB; peak 10 TFLOP/s at 0.5, 1 TB/s at 0.5
    flops, nbytes = [20e9, 1e9], [1e9, 10e9]
    t = roofline_seconds(flops, nbytes, 10e12, 1e12, 0.5, 0.5)
    compute = [20e9 / 5e12, 1e9 / 5e12]  # 4 ms, 0.2 ms
    memory = [1e9 / 0.5e12, 10e9 / 0.5e12]  # 2 ms, 20 ms
    assert t == pytest.approx(max(compute[0], memory[0]) + max(compute[1], memory[1]))
    assert t == pytest.approx(0.004 + 0.020)
    assert t < sum(compute) + sum(memory) and t > max(sum(compute), sum(memory))
    for bad in (dict(efficiency=0), dict(memory_efficiency=1.5)):
        with pytest.raises(ValueError, match="efficiency"):
            roofline_seconds(flops, nbytes, 10e12, 1e12, **{"efficiency": 0.5,
                                                            "memory_efficiency": 0.5, **bad})
    with pytest.raises(ValueError, match="memory_bw > 0"):
        roofline_seconds(flops, nbytes, 10e12, 0)


def test_a_memory_bound_kernel_scales_with_bandwidth_not_with_peak():
    one = dict(flops=[1e6], nbytes=[1e9])  # 0.001 FLOP per byte: memory-bound anywhere
    base = roofline_seconds(**one, peak_flops=1e13, memory_bw=1e12)
    assert roofline_seconds(**one, peak_flops=4e13, memory_bw=1e12) == pytest.approx(base)
    assert roofline_seconds(**one, peak_flops=1e13, memory_bw=2e12) == pytest.approx(base / 2)


def test_a_step_on_a_real_graph_splits_into_memory_and_compute_bound_kernels(mlp):
    # an MLP's elementwise kernels (bias, ReLU) do ~1 FLOP per 4-8 bytes: memory-bound on a
    # GPU whose ridge is 10 FLOP/byte; doubling the peak leaves their time, doubling the
    # bandwidth halves it
    gpu = SimpleNamespace(name="toy", fp32_flops=1e13, memory_bw=1e12)
    kw = dict(efficiency=1.0, memory_efficiency=1.0)
    base = step_compute(mlp, 64, gpu, **kw)
    assert 0 < base["memory_bound_s"] <= base["compute_s"]
    faster = step_compute(mlp, 64, SimpleNamespace(**{**vars(gpu), "fp32_flops": 2e13}), **kw)
    wider = step_compute(mlp, 64, SimpleNamespace(**{**vars(gpu), "memory_bw": 2e12}), **kw)
    assert faster["memory_bound_s"] == pytest.approx(base["memory_bound_s"])
    assert wider["memory_bound_s"] == pytest.approx(base["memory_bound_s"] / 2)
    # without a memory bandwidth the model is FLOPs-only, as for the local CPU devices
    flat = step_compute(mlp, 64, SimpleNamespace(name="cpu", fp32_flops=1e13), **kw)
    assert flat["memory_bound_s"] == 0 and flat["compute_s"] == pytest.approx(
        graph.count_flops(mlp, 64)["total"] / 1e13)


# -- bytes from the graph ---------------------------------------------------------------
def test_bytes_per_kernel_of_a_tiny_mlp_counted_by_hand(mlp):
    """mlp 4 -> 3 -> 2 at batch 5: each kernel reads its float inputs and writes its
    outputs once; ReLU, three elementwise ops fused, reads its input once."""
    B, n_in, h, c = 5, 4, 3, 2
    ks = graph.kernels(mlp, B)
    dots = [k.elements for k in ks if k.ops == ("Dot",)]
    # forward: x W1 -> z1, z1' W2 -> z2; backward: dW2 = h^T dz2, dh = dz2 W2^T, dW1 = x^T dz1
    assert dots == [B * n_in + n_in * h + B * h, B * h + h * c + B * c,
                    B * h + B * c + h * c, B * c + c * h + B * h, B * n_in + B * h + n_in * h]
    relu = next(k for k in ks if len(k.ops) == 3 and k.phase == "forward")
    assert relu.elements == 2 * B * h + 1  # z in, relu(z) out, the constant 1/2
    relu_grad = next(k for k in ks if len(k.ops) == 3 and k.phase == "backward")
    assert relu_grad.elements == 3 * B * h  # z and the incoming gradient in, the gradient out
    total = sum(k.elements for k in ks)
    assert graph.count_bytes(mlp, B) == {
        "forward": 4 * sum(k.elements for k in ks if k.phase == "forward"),
        "backward": 4 * sum(k.elements for k in ks if k.phase == "backward"), "total": 4 * total}
    assert graph.count_bytes(mlp, B, float_bytes=2)["total"] == 2 * total
    assert sum(k.flops for k in ks) == graph.count_flops(mlp, B)["total"]
    with pytest.raises(ValueError, match="float_bytes"):
        graph.count_bytes(mlp, B, float_bytes=3)


def test_convolutions_are_compute_heavy_and_elementwise_kernels_memory_heavy(resnet50):
    ks = graph.kernels(resnet50, 64)
    convs = [k for k in ks if k.ops[0].startswith("AbstractConv2d")]
    elementwise = [k for k in ks if k.ops[0] == "Elemwise"]
    assert len(convs) == 53 + 53 + 52  # forward, grad weights, grad inputs (not of the image)
    assert min(k.intensity() for k in convs) > 1 > max(k.intensity() for k in elementwise)
    assert sum(k.fast_conv_flops for k in ks) == costmodel.winograd_flops(resnet50, 64)
    assert all(re.match(r"conv \d+x\d+ \d+->\d+ out \d+x\d+, ", k.label) for k in convs)


# -- the catalogue ---------------------------------------------------------------------
DATASHEET_BW = {"K80": 480 / 2, "P100-PCIe": 732, "P100": 732, "V100": 900, "V100-32GB": 900,
                "A100": 1555, "A100-80GB": 2039, "H100": 3350, "H100-PCIe": 2000}


def test_every_catalogue_gpu_has_a_cited_memory_bandwidth():
    assert set(DATASHEET_BW) == set(gpus.CATALOGUE)
    doc = " ".join(gpus.__doc__.split())
    for name, g in gpus.CATALOGUE.items():
        assert g.memory_bw == DATASHEET_BW[name] * GB, name
        assert "datasheet" in g.source and g.generation in (
            "Kepler", "Pascal", "Volta", "Ampere", "Hopper")
    for quoted in ("480 GB/s per board", "732 GB/s", "900 GB/s", "1,555", "2,039 GB/s",
                   "3.35 TB/s", "H100 PCIe 2 TB/s"):
        assert quoted in doc, quoted  # each figure cited beside its datasheet
    h100, pcie = gpus.get_gpu("H100"), gpus.get_gpu("H100-PCIe")
    assert pcie.peak("fp16") == pytest.approx(1513 / 2 * 1e12) and pcie.fp32_flops == 51e12
    assert h100.peak("fp16") / h100.memory_bw > 2.5 * (312e12 / 2039e9) / 2  # ridge grew


def test_the_stored_efficiencies_are_what_the_calibration_solves(resnet50):
    for (name, precision, ips, batch), stored in gpus.ROOFLINE_EFFICIENCY.items():
        g = gpus.get_gpu(name)
        cal = g.calibration[precision]
        assert (cal.images_per_s, cal.batch) == (ips, batch)
        solved = costmodel._solve_efficiency(g, precision, cal, costmodel.DEFAULT_WINOGRAD,
                                             gpus.MEMORY_EFFICIENCY)
        assert solved == pytest.approx(stored, rel=1e-9)
        # and the roofline gives the published figure back on one GPU
        p = predict(resnet50, g, 1, batch, strategy="ring", precision=precision)
        assert p.images_per_s == pytest.approx(ips, rel=1e-6)
        assert p.efficiency == stored and 0 < p.memory_bound_s < p.compute_s


def test_the_memory_efficiency_is_the_rules_value(resnet50):
    value, solved = validation.memory_efficiency_rule()
    assert value == gpus.MEMORY_EFFICIENCY
    assert max(solved.values()) <= value  # no calibrated compute efficiency above it
    below = value - 0.01
    assert any(costmodel.calibrated_efficiency(g, p, memory_efficiency=below) > below
               for g, p in ((gpus.get_gpu(n), q) for n, q in solved))
    with pytest.raises(ValueError, match="raise memory_efficiency"):
        costmodel.calibrated_efficiency("A100-80GB", "fp16", memory_efficiency=0.2)


def test_the_h100_uses_its_own_peak_and_bandwidth(resnet50):
    a100, h100 = gpus.get_gpu("A100-80GB"), gpus.get_gpu("H100")
    c = costmodel.calibration_for(h100, "fp16")
    assert not c["calibrated"] and c["assumed_like"] == "A100-80GB"
    assert c["efficiency"] == costmodel.calibration_for(a100, "fp16")["efficiency"]
    p = predict(resnet50, h100, 1, 256, strategy="ring", precision="fp16")
    a = predict(resnet50, a100, 1, 256, strategy="ring", precision="fp16")
    # far less than the 3.2x of its Tensor Core peak: more kernels are bound by memory
    assert 1.5 < p.images_per_s / a.images_per_s < 2.5 < h100.peak("fp16") / a100.peak("fp16")
    assert p.memory_bound_s / p.compute_s > a.memory_bound_s / a.compute_s
    wider = dataclasses.replace(h100, memory_bw=2 * h100.memory_bw)
    assert predict(resnet50, wider, 1, 256, strategy="ring", precision="fp16").images_per_s \
        > 1.2 * p.images_per_s
    flat = predict(resnet50, h100, 1, 256, strategy="ring", precision="fp16", roofline=False)
    assert flat.images_per_s > 1.3 * p.images_per_s  # the FLOPs-only model, as before


# -- validation: the held-out split and the H100 ----------------------------------------
def test_the_held_out_split_never_contains_a_calibration_source(mlp):
    rows = published.load()
    stand_in = {n: mlp for n in published.NETWORKS}  # roles do not depend on the network
    out = published.compare(rows, stand_in, overlap=False)
    split = validation.held_out_split(out)
    assert split["calibration"] == sorted(validation.CALIBRATION_SOURCES)
    assert not set(split["calibration"]) & set(split["held out"])
    assert {"nvidia-dle-mxnet", "nvidia-dle-tf", "mlperf-v2.1"} == set(split["held out"])
    assert not any(r["calibration_row"] for r in out if r["source_id"] in split["held out"])
    # every figure the catalogue (compute efficiencies and, through them, the memory
    # efficiency's rule) rests on is a row of a calibration source
    for g in gpus.CATALOGUE.values():
        for precision, cal in g.calibration.items():
            owner = cal.carried_from or g.name
            assert any(r["calibration_row"] and r["gpu"] == owner and r["precision"] == precision
                       and r["source_id"] in split["calibration"] for r in out)
    errors = validation.one_gpu_errors(out, out)
    assert errors and all(e["role"] == "held out" or e["source_id"] == "tf" for e in errors)


def test_the_h100_against_mlperfs_a100_of_the_same_round(resnet50):
    """MLPerf Training v2.1: 8 H100s (preview) and 8 A100s, NVIDIA's MXNet submissions.
    Their software is far faster than the calibration recipes on both GPUs; the ratio
    cancels it and is predicted within 15 %. The FLOPs-only model, which charged the H100
    the A100's fraction of its 3.2x higher Tensor Core peak, was 60 % too fast."""
    rows = [r for r in published.load() if r["source_id"] == "mlperf-v2.1"]
    nets = {"ResNet-50": resnet50}
    roof = validation.reference_ratio(published.compare(rows, nets), "H100", "A100-80GB",
                                      "mlperf-v2.1")
    assert roof["published"] == pytest.approx(52437 / 27186)
    assert abs(roof["error"]) < 0.15
    flat = validation.reference_ratio(published.compare(rows, nets, roofline=False), "H100",
                                      "A100-80GB", "mlperf-v2.1")
    assert flat["error"] > 0.5
    with pytest.raises(ValueError, match="no rows of both"):
        validation.reference_ratio(published.compare(rows, nets), "K80", "A100-80GB",
                                   "mlperf-v2.1")


def test_predictions_report_the_memory_bound_share(resnet50):
    p = predict(resnet50, "V100", 8, batch_per_gpu=64, strategy="ring", precision="fp16")
    assert p.memory_efficiency == gpus.MEMORY_EFFICIENCY and 0 < p.memory_bound_s < p.compute_s
    assert 0 < p.sustained_efficiency < p.efficiency  # memory-bound kernels pull it down
    same = predict(resnet50, "V100", 8, batch_per_gpu=64, strategy="ring", precision="fp16",
                   memory_efficiency=gpus.MEMORY_EFFICIENCY)
    assert same.step_s == pytest.approx(p.step_s)
    # another memory efficiency: the compute efficiency is solved again, and the published
    # single-GPU figure still comes back
    other = predict(resnet50, "V100", 1, 256, strategy="ring", precision="fp16",
                    memory_efficiency=0.8)
    assert other.efficiency != p.efficiency and other.images_per_s == pytest.approx(1200)


# -- chapter 11's figure: intensities against ridges --------------------------------------
def test_intensities_and_ridges(mlp):
    rows = costmodel.kernel_intensities(mlp, 5)
    ks = graph.kernels(mlp, 5)
    assert [r["bytes"] for r in rows] == [4 * k.elements for k in ks]
    assert [r["intensity"] for r in costmodel.kernel_intensities(mlp, 5, "fp16")] == pytest.approx(
        [2 * r["intensity"] for r in rows])  # 16-bit numbers: half the bytes, twice the intensity
    assert {r["kind"] for r in rows} == {"matrix product", "elementwise", "reduction, pool, softmax"}
    ridges = {r["gpu"]: r for r in costmodel.ridge_points(gpus.BOOK_GPUS, "fp16")}
    assert set(ridges) == {"V100", "A100", "H100"}  # no FP16 Tensor Cores on the K80 and P100
    h = ridges["H100"]
    assert h["ridge"] == pytest.approx(989.5e12 / 3350e9)
    assert h["model_ridge"] == pytest.approx(h["ridge"] * h["efficiency"] / h["memory_efficiency"])
    assert not h["calibrated"] and h["label"].startswith("uncalibrated")


def test_the_roofline_figure_marks_every_kernel_and_every_ridge(mlp):
    import matplotlib.pyplot as plt

    from mgpu_lab.figures import plots
    rows = costmodel.kernel_intensities(mlp, 8)
    ridges = costmodel.ridge_points(["V100", "H100"], "fp16")
    fig = plots.roofline([{"title": "one panel", "kernels": {"mlp": rows}, "ridges": ridges}],
                         "predicted: by the test")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel().startswith("arithmetic intensity (FLOPs")
    assert fig.texts[0].get_text().endswith("(predicted)") and ax.get_title() == "one panel"
    marks = sorted(x for c in ax.collections for x in c.get_offsets()[:, 0])
    assert marks == pytest.approx(sorted(r["intensity"] for r in rows if r["intensity"] > 0))
    drawn = {round(line.get_xdata()[0], 6) for line in ax.lines}
    assert drawn == {round(r[k], 6) for r in ridges for k in ("ridge", "model_ridge")}
    assert "predicted: by the test" in " ".join(t.get_text() for t in ax.texts)
    plt.close(fig)
