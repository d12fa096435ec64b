"""Time to accuracy (``mgpu_lab.predict.time_to_accuracy``): steps from the trade-off
times the cost model's step, the three limits, the best split and plan; chapter 13's
exercises and its explorer's grid (without a browser; tests/test_browser_tta.py drives
it in Chromium).

Unit tier: no Theano function is compiled (graphs are walked, not run). The models are
small (the digits MLP, a ResNet-26 at 32 px) and one made-up slow GPU makes the
communication limit land on a handful of samples.
"""
import math

import pytest
from hypothesis import given, settings, strategies as st

from mgpu_lab import exercises, models
from mgpu_lab.figures import tta_explorer
from mgpu_lab.measure import tta_bench
from mgpu_lab.predict import costmodel, gpus, memory, network
from mgpu_lab.predict import time_to_accuracy as tta
from mgpu_lab.predict.batch_scaling import TradeOff, fit_tradeoff, steps_to_target
from mgpu_lab.statistics import gradient_noise_scale

GiB = 2 ** 30
# A made-up GPU, slow enough (1 GFLOP/s) that the digits MLP's exchange over a 1 GB/s link
# is worth a few samples of compute: b* lands where a test can see it.
SLOW = gpus.GPU("slow test GPU", 4 * GiB, 1e9, "test link", 1e9, "test peer", 1e9,
                "made up for tests")


@pytest.fixture(scope="module")
def mlp():
    return models.mlp(n_in=64, hidden=(64,), seed=0)  # the digits MLP: graph only


@pytest.fixture(scope="module")
def small_work(mlp):
    return tta.workload("digits MLP (test)", mlp, TradeOff(100.0, 6400.0, 64.0), "assumed: test")


@pytest.fixture(scope="module")
def resnet26():
    return models.resnet_like(26, image_size=32)


# -- the ImageNet workload ---------------------------------------------------------------
def test_imagenet_reaches_the_target_in_goyal_et_al_s_90_epochs_at_256():
    w = tta.imagenet_resnet50(model=object())  # the model is not used here
    assert w.fit.b_crit == tta.IMAGENET_B_CRIT == w.b_crit
    assert w.fit.b_crit == pytest.approx(w.fit.e_min / w.fit.s_min, rel=1e-12)
    e_256 = 256 * w.steps(256)
    assert e_256 == pytest.approx(90 * 1_281_167, rel=1e-12)
    # at B_crit: twice the fewest steps and twice the fewest samples (the trade-off's corner)
    assert w.steps(w.b_crit) == pytest.approx(2 * w.fit.s_min, rel=1e-12)
    assert "assumed" in w.label and "32,768" in w.label
    with pytest.raises(ValueError, match="b_crit must be a positive"):
        tta.imagenet_resnet50(0, model=object())


def test_a_workload_s_steps_are_the_fit_s_and_stop_at_its_data(small_work):
    for b in (1, 8, 64, 1000):
        assert small_work.steps(b) == steps_to_target(b, small_work.fit)
    capped = tta.workload("capped", None, small_work.fit, "x", max_batch=100)
    assert capped.steps(100) == small_work.steps(100)
    with pytest.raises(ValueError, match="more than the 100 samples"):
        capped.steps(101)


def test_a_workload_refuses_a_fit_that_is_not_a_trade_off():
    with pytest.raises(ValueError, match="TradeOff with s_min > 0"):
        tta.workload("w", None, (1.0, 2.0, 2.0), "x")
    with pytest.raises(ValueError, match="s_min > 0"):
        tta.workload("w", None, TradeOff(-1.0, 2.0, -2.0), "x")
    with pytest.raises(ValueError, match="must be e_min / s_min"):
        tta.workload("w", None, TradeOff(1.0, 2.0, 3.0), "x")


# -- one plan ------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["host", "ring"])
def test_time_is_the_fit_s_steps_times_the_cost_model_s_step(small_work, mlp, strategy):
    p = tta.time_to_target(small_work, SLOW, 4, 16, strategy)
    ref = costmodel.predict(mlp, SLOW, 4, batch_per_gpu=16, strategy=strategy)
    assert (p.batch, p.step_s, p.comm_s, p.compute_s) == (64, ref.step_s, ref.comm_s, ref.compute_s)
    assert p.steps == steps_to_target(64, small_work.fit)
    assert p.seconds == pytest.approx(p.steps * p.step_s, rel=1e-12)
    assert p.gpu_seconds == pytest.approx(4 * p.seconds, rel=1e-12)
    assert p.samples == pytest.approx(64 * p.steps, rel=1e-12)
    assert p.cost_label == ref.label and p.steps_label == "assumed: test"


def test_hierarchical_is_the_cluster_prediction_in_whole_nodes(small_work, mlp):
    p = tta.time_to_target(small_work, "V100", 16, 8, "hierarchical")
    ref = network.predict_cluster(mlp, "V100", 16, 8, "IB-EDR", 8, strategy="hierarchical",
                                  overlap=False)
    assert (p.step_s, p.comm_s) == (ref["step_s"], ref["comm_s"])
    assert tta.step(mlp, "V100", 4, 8, "hierarchical")[0] == network.predict_cluster(
        mlp, "V100", 4, 4, "IB-EDR", 8, strategy="hierarchical", overlap=False)["step_s"]
    with pytest.raises(ValueError, match="not whole nodes of 8"):
        tta.step(mlp, "V100", 12, 8, "hierarchical")
    with pytest.raises(ValueError, match="unknown strategy 'tree'"):
        tta.step(mlp, "V100", 4, 8, "tree")


# -- the three limits ----------------------------------------------------------------------
def test_the_memory_limit_is_chapter_7_s(resnet26):
    b = tta.memory_limit(resnet26, "V100")
    assert b == memory.max_batch_size(resnet26, gpus.usable_bytes("V100"),
                                      optimizer="momentum")
    assert memory.estimate(resnet26, b, "momentum")["total"] <= gpus.usable_bytes("V100")
    assert memory.estimate(resnet26, b + 1, "momentum")["total"] > gpus.usable_bytes("V100")


@pytest.mark.parametrize("strategy, n", [("host", 4), ("ring", 8)])
def test_below_b_star_communication_takes_longer_than_compute(mlp, strategy, n):
    b_star = tta.communication_limit(mlp, SLOW, n, strategy)
    assert 2 <= b_star <= 10_000  # the slow GPU puts it where the grid can see it
    below = costmodel.predict(mlp, SLOW, n, batch_per_gpu=math.floor(b_star), strategy=strategy)
    above = costmodel.predict(mlp, SLOW, n, batch_per_gpu=math.ceil(b_star), strategy=strategy)
    assert below.comm_s >= below.compute_s and above.comm_s <= above.compute_s


def test_one_gpu_with_a_ring_exchanges_nothing(mlp):
    assert tta.communication_limit(mlp, SLOW, 1, "ring") == 0


def test_limits_name_all_three_and_the_best_split(small_work):
    lim = tta.limits(small_work, SLOW, 8, "ring")
    assert set(lim) == {"n_gpus", "memory", "communication", "statistics", "best"}
    assert lim["statistics"] == small_work.b_crit / 8
    assert lim["best"] == tta.best_split(lim["communication"], small_work.b_crit, 8,
                                         lim["memory"])


# -- the best split and plan ---------------------------------------------------------------
def _time(b, b_star, b_crit, n):  # S_min c = 1
    return (b + b_star) * (1 + b_crit / (n * b))


@settings(max_examples=200, deadline=None)
@given(b_star=st.floats(0.01, 1e4), b_crit=st.floats(1.0, 1e6), n=st.integers(1, 4096))
def test_best_split_minimises_the_time_over_every_split(b_star, b_crit, n):
    b = tta.best_split(b_star, b_crit, n)
    assert b >= 1
    t = _time(b, b_star, b_crit, n)
    for other in (1, b * 0.9, b * 1.1, b * 2, b / 2, 10 * b):
        if other >= 1:
            assert t <= _time(other, b_star, b_crit, n) * (1 + 1e-12)
    if b > 1:  # unclamped: the closed form of the minimum
        assert t == pytest.approx((math.sqrt(b_star) + math.sqrt(b_crit / n)) ** 2, rel=1e-9)


def test_best_split_stops_at_the_memory_limit():
    assert tta.best_split(100, 10_000, 1) == 1000
    assert tta.best_split(100, 10_000, 1, b_mem=300) == 300
    with pytest.raises(ValueError, match="b_crit > 0"):
        tta.best_split(1, 0, 1)


def test_the_best_plan_is_the_shortest_and_near_the_closed_form(small_work, mlp):
    splits = range(1, 65)
    best = tta.best_plan(small_work, SLOW, [2, 4, 8], splits, "ring")
    every = tta.plans(small_work, SLOW, [2, 4, 8], splits, "ring")
    assert best.seconds == min(p.seconds for p in every)
    b_star = tta.communication_limit(mlp, SLOW, best.n_gpus, "ring")
    b = tta.best_split(b_star, small_work.b_crit, best.n_gpus)
    assert math.floor(b) - 1 <= best.batch_per_gpu <= math.ceil(b) + 1


def test_the_best_plan_respects_memory_and_data(small_work):
    tiny = gpus.GPU("tiny", 1, 1e9, "x", 1e9, "x", 1e9, "made up")
    with pytest.raises(ValueError, match="not even one sample"):
        tta.best_plan(small_work, tiny, [1, 2])
    capped = tta.workload("capped", small_work.model, small_work.fit, "x", max_batch=8)
    best = tta.best_plan(capped, SLOW, [1, 2, 4, 8, 16], [1, 2, 4, 8])
    assert best.batch <= 8
    with pytest.raises(ValueError, match="within the workload's 8 samples"):
        tta.best_plan(capped, SLOW, [16], [1, 2])


# -- published runs and a measured workload --------------------------------------------
def test_published_runs_predict_the_step_of_the_steps_they_ran(mlp):
    rows = tta.published_runs(model=mlp)
    assert [r["n_gpus"] for r in rows] == [n for _, n, _, _, _ in tta.PUBLISHED_RUNS]
    for r in rows:
        assert r["steps"] == pytest.approx(90 * 1_281_167 / r["batch"], rel=1e-12)
        step_s = tta.step(mlp, "P100", r["n_gpus"], r["batch_per_gpu"], "hierarchical")[0]
        assert r["predicted_h"] == pytest.approx(r["steps"] * step_s / 3600, rel=1e-12)
    assert {r["source"] for r in rows} == {"nvidia2017fbimagenet", "goyal2017accurate",
                                           "akiba2017extremely"}


def _sweep(fit):
    return {"fit": fit, "target": {"metric": "validation loss", "value": 0.15},
            "machine_label": "measured on a test machine", "created": "2026-01-02T03:04:05",
            "model": {"name": "mlp"}, "data": {"n_train": 1438}}


def test_a_measured_workload_is_the_sweep_s_fit_labelled_measured():
    w = tta.measured_workload(_sweep({"s_min": 80.0, "e_min": 2400.0, "b_crit": 30.0}))
    assert w.fit == TradeOff(80.0, 2400.0, 30.0) and w.max_batch == 1438
    assert w.label.startswith("measured on a test machine (2026-01-02)")
    assert w.model.n_params == 4810  # the digits MLP
    with pytest.raises(ValueError, match="no fitted trade-off"):
        tta.measured_workload(_sweep(None))


# -- chapter 13's exercises ----------------------------------------------------------------
def test_exercise_13_1_is_the_library_s_noise_scale():
    a = exercises.ANSWERS["13.1"]
    want = gradient_noise_scale(*exercises.EXERCISE_13_1).b_simple
    assert a.expected() == pytest.approx(want)
    assert want == pytest.approx(320.0)  # worked by hand in the solution
    assert exercises.is_right("13.1", 320) and not exercises.is_right("13.1", 64)


def test_exercise_13_2_reads_b_crit_off_the_sweep():
    b, s = exercises.EXERCISE_13_2
    assert exercises.ANSWERS["13.2"].expected() == pytest.approx(fit_tradeoff(b, s).b_crit)
    assert exercises.is_right("13.2", 256) and not exercises.is_right("13.2", 128)


def test_exercise_13_3_is_the_best_plan_at_the_memory_limit():
    n = exercises.ANSWERS["13.3"].expected()
    w = tta.imagenet_resnet50()
    b_mem = tta.memory_limit(w.model, "V100")
    every = tta.plans(w, "V100", tta_explorer.TTA_N, [b_mem], "host")
    assert n == min(every, key=lambda p: p.seconds).n_gpus
    assert 1 < n < max(tta_explorer.TTA_N)  # the host gather's exchange grows with N


# -- measured on this machine (mgpu_lab.measure.tta_bench) ---------------------------------
def _fake_sweep():
    fit = {"s_min": 80.0, "e_min": 2400.0, "b_crit": 30.0}
    rows = [{"batch": 16, "lr": 0.4, "steps_by_seed": [230, 232], "steps": 231},
            {"batch": 64, "lr": 0.8, "steps_by_seed": [110, 112], "steps": 111},
            {"batch": 256, "lr": None, "steps_by_seed": None, "steps": None}]
    return {**_sweep(fit), "rows": rows, "seeds": [0, 1], "budget": 3000,
            "library_hash": "x"}


def test_the_bench_refuses_a_batch_the_sweep_did_not_tune():
    with pytest.raises(ValueError, match="batch 256: the sweep has no tuned learning rate"):
        tta_bench.run(sweep=_fake_sweep(), batch_sizes=(16, 256), progress=False)
    with pytest.raises(ValueError, match="unknown setting"):
        tta_bench.run(sweep=_fake_sweep(), batchsizes=(16,), progress=False)
    with pytest.raises(ValueError, match="no fitted trade-off"):
        tta_bench.run(sweep={**_fake_sweep(), "fit": None}, progress=False)


def test_the_bench_reads_the_sweep_s_own_steps_per_seed():
    sweep = _fake_sweep()
    assert tta_bench._seed_steps(sweep["rows"][0], sweep, 1) == 232
    assert tta_bench._seed_steps(sweep["rows"][0], sweep, 7) is None


def test_the_bench_s_table_fits_the_page(tmp_path):
    row = {"n_devices": 2, "batch": 256, "lr": 0.8, "steps": 96, "predicted_steps": 90.0,
           "step_s": 0.004872, "predicted_step_s": 0.000269, "measured_s": 0.53,
           "predicted_s": 0.024, "foreign_load_cores": 1.48}
    result = {"rows": [row, {**row, "steps": None, "measured_s": None}],
              "machine_label": "measured on a test machine", "created": "2026-01-02T03:04:05"}
    text = tta_bench.format_table(result)
    assert all(len(line) <= 88 for line in text.splitlines())
    assert "   96 " in text and "   - " in text
    path = tta_bench.save(result, tmp_path / "t.json")
    assert tta_bench.load(path) == result
    with pytest.raises(FileNotFoundError, match="make time-to-target"):
        tta_bench.load(tmp_path / "missing.json")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_bench_trains_to_the_target_on_a_local_device():
    """One device, one batch: the steps are the sweep's protocol (the same batches and check
    after every step), so the run reaches the target; times are positive and predicted."""
    sweep = _fake_sweep()
    r = tta_bench.run(sweep=sweep, devices=(1,), batch_sizes=(64,), bare_steps=2, repeats=2,
                      progress=False)
    (row,) = r["rows"]
    assert row["steps"] is not None and row["final_loss"] <= 0.15
    assert row["measured_s"] > 0 and row["predicted_step_s"] > 0
    assert row["predicted_steps"] == pytest.approx(steps_to_target(64, TradeOff(80.0, 2400.0, 30.0)))
    assert r["machine"]["cores"] >= 1 and r["kind"] == "measured"
    assert len(row["train_s_runs"]) == 2 and row["train_s"] == pytest.approx(
        sum(row["train_s_runs"]) / 2)
