"""The cost model judged on figures it did not see (predict/validation.py). Builds the three
published networks' graphs (never compiled): about half a minute."""
import pytest

from mgpu_lab.predict import costmodel, published, validation


@pytest.fixture(scope="module")
def nets():
    return published.networks()


@pytest.fixture(scope="module")
def rows():
    return published.load()


def test_calibration_rows_give_their_figure_back_and_are_left_out_of_the_errors(rows, nets):
    out = published.compare(rows, nets, overlap=False)
    cal = [r for r in out if r["calibration_row"]]
    assert {r["source_id"] for r in cal} == set(validation.CALIBRATION_SOURCES)
    for r in cal:
        if r["strategy"] == "ring":  # no exchange on 1 GPU: exactly the published figure
            assert r["predicted"] == pytest.approx(r["images_per_s"])
    table = validation.errors_by_source(out)
    roles = {t["source_id"]: t["role"] for t in table}
    assert roles == {"tf": "calibration source", "nvidia-dle": "calibration source",
                     "nvidia-dle-mxnet": "held out", "nvidia-dle-tf": "held out",
                     "mlperf-v2.1": "held out"}
    dle = next(t for t in table if t["source_id"] == "nvidia-dle")
    assert dle["n_one"] == 0  # all its 1-GPU rows are calibration rows
    for t in table:
        if t["role"] == "held out" and t["source_id"] != "mlperf-v2.1":
            assert t["n_one"] == 4 and t["one_gpu"] < 0.25 and t["n_speedup"] == t["n_multi"]
    mlperf = next(t for t in table if t["source_id"] == "mlperf-v2.1")
    assert mlperf["n_one"] == 0 and mlperf["n_multi"] == 2  # 8 GPUs only: no speed-up


def test_the_default_winograd_count_is_the_one_that_wins_out_of_sample(rows, nets):
    by_choice, selection = validation.winograd_held_out(rows, nets)
    assert [b["choice"] for b in by_choice] == list(validation.WINOGRAD_CHOICES)
    best, mean = validation.best_winograd(selection)
    assert validation.WINOGRAD_CHOICES[best] == costmodel.DEFAULT_WINOGRAD
    assert mean[best] < mean["direct"]
    # chosen on TensorFlow's table (the only one with VGG-16 and ResNet-152), scored elsewhere
    tf = next(s for s in selection if s["selected_on"] == "tf")
    assert tf["choice"] == best
    # ResNet-50 alone cannot tell the counts apart: the calibration absorbs the factor
    assert next(s for s in selection if s["selected_on"] == "nvidia-dle")["choice"] == "tie"


def test_vgg16_on_8_p100s_implies_a_slow_all_reduce(rows, nets):
    row = next(r for r in rows if r["network"] == "VGG-16" and r["gpu"] == "P100"
               and r["n_gpus"] == 8 and r["batch_per_gpu"] == 32)
    bw = validation.implied_link_bandwidth(row, {"VGG-16": nets["VGG-16"]})
    assert 1e9 < bw < 10e9 < costmodel.get_gpu("P100").peer_bw  # far below NVLink's 80 GB/s
