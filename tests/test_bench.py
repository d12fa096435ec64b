"""A short real benchmark run: what it saves (fields, machine, positive numbers), not how fast."""
import csv
import json

import numpy as np
import pytest

from mgpu_lab import presets
from mgpu_lab.data import random_batch
from mgpu_lab.measure import bench
from mgpu_lab.cli import main
from mgpu_lab.engines.pinning import cores
from mgpu_lab.predict.graph import count_flops

pytestmark = pytest.mark.integration  # worker processes (tests/README.md: tiers)


@pytest.fixture(scope="module")
def short_run(cnn, tmp_path_factory):
    """1 and 3 devices (3 > 2 cores here: oversubscribed), two batch sizes, tiny repeats."""
    result = bench.run(cnn, devices=[3, 1], batch_sizes=[24, 12], warmup=1,
                                 repeats=2, steps=1, progress=False)
    paths = bench.save(result, tmp_path_factory.mktemp("results"))
    return result, paths


def test_every_configuration_is_measured(short_run):
    result, _ = short_run
    assert [(r["n_devices"], r["batch_size"]) for r in result["rows"]] == [
        (1, 12), (1, 24), (3, 12), (3, 24)]  # sorted, whatever order they were asked in
    for r in result["rows"]:
        assert r["cores"] == len(cores())
        assert r["oversubscribed"] == (r["n_devices"] > len(cores()))
        assert 0 < r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert 0 < r["t_compute"] < r["t_engine"] < r["t_step"]
        assert r["t_update"] > 0 and r["foreign_load_cores"] >= 0
        assert r["runs"] == 2 and 1 <= r["runs_kept"] <= 2


def test_speedups_and_predictions_are_relative_to_one_device(short_run):
    result, _ = short_run
    one = {r["batch_size"]: r["images_per_s"] for r in result["rows"] if r["n_devices"] == 1}
    for r in result["rows"]:
        assert r["speedup"] == pytest.approx(r["images_per_s"] / one[r["batch_size"]])
        assert r["predicted_images_per_s"] > 0
        assert r["speedup_error"] == pytest.approx(r["predicted_speedup"] / r["speedup"] - 1)
        if r["n_devices"] == 1:
            assert r["speedup"] == r["predicted_speedup"] == 1.0


def test_baseline_and_machine_constants(short_run, cnn):
    result, _ = short_run
    bare = result["baseline"]["bare"]
    assert [b["batch_size"] for b in bare] == [12, 24]
    for b in bare:
        assert b["bare_s"] > 0 and len(b["bare_s_all"]) == 2
        assert b["flops"] == count_flops(cnn, b["batch_size"])["total"]
    c = result["machine_constants"]
    assert c["flops_per_s"] > 0 and c["copy_bw"] > 0 and c["latency_s"] > 0
    t = result["targets"]
    assert set(t["overhead_1"]) == {12, 24} and t["speedup_2"] == {}  # no N=2 in this run
    assert t["max_abs_speedup_error"] >= 0


def test_json_and_csv_say_which_machine(short_run):
    result, (json_path, csv_path) = short_run
    assert json_path.name.startswith("bench-") and json_path.suffix == ".json"
    assert csv_path.with_suffix(".json") == json_path
    saved = json.loads(json_path.read_text())
    assert saved["kind"] == "measured"
    assert set(saved["machine"]) >= {"cpu", "cores", "python", "numpy", "theano"}
    assert saved["settings"]["blas_threads_per_device"] == 1
    assert len(saved["rows"]) == 4
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row, r in zip(rows, result["rows"]):
        assert row["cpu"] == result["machine"]["cpu"] and row["theano"] == result["machine"]["theano"]
        assert int(row["n_devices"]) == r["n_devices"]
        assert float(row["images_per_s"]) == pytest.approx(r["images_per_s"])
        assert all(float(row[f"t_{p}"]) == pytest.approx(r[f"t_{p}"]) for p in bench.PHASES)


def test_table_and_targets_text(short_run):
    result, _ = short_run
    table = bench.format_table(result)
    assert result["machine"]["cpu"] in table and len(table.splitlines()) == 2 + 4
    assert ("oversubscribed" in table) == (3 > len(cores()))
    assert "pool overhead at N=1" in bench.format_targets(result)


def test_synthetic_batch_fits_the_models(cnn):
    x, y = random_batch(cnn, 5)
    assert x.shape == (5, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int32
    mlp = presets.bench_model("mlp")
    x, y = random_batch(mlp, 3)
    assert x.shape == (3, 3 * 32 * 32) and 0 <= y.min() and y.max() < 10


def test_bad_requests_fail_before_any_process_starts(cnn):
    with pytest.raises(ValueError, match="cannot be split over 4 devices"):
        bench.run(cnn, devices=[1, 4], batch_sizes=[2, 8], progress=False)
    with pytest.raises(ValueError, match="unknown benchmark model 'vgg'"):
        presets.bench_model("vgg")


@pytest.mark.slow
def test_cli_bench_saves_json_and_csv(tmp_path, capsys):
    assert main(["bench", "--devices", "1", "--batch", "4", "--warmup", "0", "--repeats", "1",
                 "--steps", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pool overhead at N=1" in out and "saved:" in out
    saved = sorted(p.suffix for p in tmp_path.iterdir())
    assert saved == [".csv", ".json"]
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["model"]["spec"] == presets.BENCH_MODELS["cnn"].describe()


def test_measured_figures_say_where_they_were_measured(short_run):
    import matplotlib.pyplot as plt

    from mgpu_lab.figures import plots
    result, _ = short_run
    for make in (plots.throughput, plots.speedup, plots.step_breakdown):
        fig = make(result)
        ax = fig.axes[0]
        assert ax.get_title().startswith("Measured") and "(" in ax.get_ylabel()
        notes = " ".join(t.get_text() for t in ax.texts)
        assert "measured on" in notes and result["machine"]["cpu"] in notes
        plt.close(fig)
    fig = plots.step_breakdown(result, batch_size=12)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "3"]
    plt.close(fig)


def test_runs_disturbed_by_other_programs_are_set_aside_when_enough_are_quiet():
    runs = [{"foreign": f} for f in (0.0, 0.5, 0.05, 0.0)]
    assert [r["foreign"] for r in bench._quiet(runs)] == [0.0, 0.05, 0.0]
    busy = [{"foreign": f} for f in (0.5, 0.0, 0.9)]  # one quiet run is not enough: keep all
    assert bench._quiet(busy) == busy
    two = [{"foreign": 0.0}, {"foreign": 0.0}]  # fewer runs than three, all quiet
    assert bench._quiet(two) == two
    assert bench._quiet(runs, load=lambda r: 0.0) == runs


@pytest.mark.integration
def test_strategies_are_compared_in_one_run(cnn):
    """N > 1 runs every strategy asked for; N = 1 is the first one's (one device has nothing
    to exchange); every speed-up is over that one device."""
    result = bench.run(cnn, devices=[1, 2], batch_sizes=[12], warmup=1, repeats=1, steps=1,
                       progress=False, strategies=("host", "ring", "sharded"))
    assert [(r["n_devices"], r["strategy"]) for r in result["rows"]] == [
        (1, "host"), (2, "host"), (2, "ring"), (2, "sharded")]
    assert set(result["targets"]["speedup_2_by_strategy"]) == {"host@12", "ring@12", "sharded@12"}
    ring = next(r for r in result["rows"] if r["strategy"] == "ring")
    assert ring["t_exchange"] > 0 and ring["t_stack"] == 0  # the devices reduced, not the host
    assert "sharded" in bench.format_table(result)
