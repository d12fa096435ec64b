"""The gradient noise scale, end to end: (a) every engine and strategy reports each device's
|g_i|^2 and the batch's |g|^2 equal to those computed on the host from the serial engine's
per-split gradients; (b) the truth check: per-example gradients by brute force at fixed
parameters give the exact tr(Σ) and |G|^2 of 512 digits, and the estimator, averaged over
many random batches at those parameters, agrees with them within its own standard error,
for the digits CNN and MLP; (c) the trainer tracks B_simple (None on one device)."""
import json
import math
import subprocess
import textwrap

import numpy as np
import pytest

from mgpu_lab import presets
from mgpu_lab.data import load_digits
from mgpu_lab.engines import mpi
from mgpu_lab.engines.local import DevicePool
from mgpu_lab.engines.serial import SerialEngine
from mgpu_lab.engines.update import Update, flatten
from mgpu_lab.optim import SGD, Momentum
from mgpu_lab.split import split_bounds
from mgpu_lab.statistics import NoiseScaleEMA, gradient_noise_scale
from mgpu_lab.trainer import DataParallelTrainer

# The norms are float32 sums of float32 terms (|g|^2 of ~6,000 terms) and the devices add
# their gradients in another order than the host: a relative 1e-5 allows that, and nothing
# like a wrong weighting or a norm of the wrong vector.
NORM_RTOL = 1e-5
BATCH = 47  # 24 + 23 on 2 devices, 16 + 16 + 15 on 3: uneven splits


def reference_norms(model, values, x, y, n_devices):
    """(|g_i|^2 per split, |g|^2) on the host, in float64, from the serial engine's
    gradient of each split alone and their stack sum_i (n_i/B) g_i."""
    with SerialEngine(model, 1) as one:
        splits = [flatten(one.gradients(values, x[a:b], y[a:b])).astype(np.float64)
                  for a, b in split_bounds(len(x), n_devices)]
    sizes = [b - a for a, b in split_bounds(len(x), n_devices)]
    stacked = sum(n / len(x) * g for n, g in zip(sizes, splits))
    return [float(g @ g) for g in splits], float(stacked @ stacked)


def assert_norms(result, ref):
    splits, batch = ref
    assert result.split_sq_norms == pytest.approx(splits, rel=NORM_RTOL)
    assert result.batch_sq_norm == pytest.approx(batch, rel=NORM_RTOL)
    assert all(isinstance(v, float) for v in result.split_sq_norms + [result.batch_sq_norm])


@pytest.fixture
def at_init(cnn):
    """The session CNN at its initial parameters, left there afterwards."""
    init = cnn.get_values()
    yield cnn, init
    cnn.set_values(init)


@pytest.fixture(scope="module")
def batch(digits):
    return digits[0][:BATCH], digits[1][:BATCH]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_serial_engine_reports_the_hosts_norms(at_init, batch, n):
    model, values = at_init
    ref = reference_norms(model, values, *batch, n)
    with SerialEngine(model, n) as eng:
        assert_norms(eng.step(values, *batch), ref)  # the gradient alone
        opt = Momentum(0.05)
        res = eng.step(values, *batch, Update(opt, opt.init_state(values), 0))
        assert_norms(res, ref)  # with an update: the norms of the gradient it used
    if n == 1:
        assert res.split_sq_norms[0] == pytest.approx(res.batch_sq_norm, rel=1e-6)
    else:
        with pytest.raises(AssertionError):  # |g_i|^2 of one split is not |g|^2
            assert res.split_sq_norms[0] == pytest.approx(res.batch_sq_norm, rel=1e-3)


def _quick(strategy):  # one pool start each (a pool's strategy is fixed when it starts)
    return strategy if strategy in ("ring", "sharded") else pytest.param(
        strategy, marks=pytest.mark.slow)


@pytest.mark.integration
@pytest.mark.parametrize("strategy", [_quick(s) for s in ("host", "ring", "sharded",
                                                          "hierarchical")])
def test_pool_reports_the_hosts_norms_under_every_strategy(at_init, batch, strategy):
    """Device-side strategies: |g|^2 from device 0's reduced copy (ring, hierarchical) or
    the sum of the shards' parts (sharded); the host gather's host takes it from its stack."""
    model, values = at_init
    ref = reference_norms(model, values, *batch, 2)
    opt = SGD(0.1)
    state = opt.init_state(values) if strategy == "host" else None
    kw = {"devices_per_node": 2} if strategy == "hierarchical" else {}
    with DevicePool(model.spec, 2, strategy=strategy, **kw) as pool:
        assert_norms(pool.step(values, *batch), ref)
        assert_norms(pool.step(values, *batch, Update(opt, state, 0)), ref)


MPI_JOB = textwrap.dedent("""
    import json, sys
    from mgpu_lab import presets
    from mgpu_lab.data import load_digits
    from mgpu_lab.engines.mpi import MPIEngine
    from mgpu_lab.engines.update import Update
    from mgpu_lab.optim import SGD
    model = presets.digits_model("cnn")
    values = model.get_values()
    x, y = load_digits()
    x, y = x[:{batch}], y[:{batch}]
    rows = []
    for s in ("host", "ring", "sharded", "hierarchical"):
        eng = MPIEngine(model, 2, strategy=s)
        opt = SGD(0.1)
        for update in (None, Update(opt, opt.init_state(values) if s == "host" else None, 0)):
            r = eng.step(values, x, y, update)
            rows.append([eng.rank, s, r.split_sq_norms, r.batch_sq_norm])
    with open(sys.argv[1] + f"-{{eng.rank}}.json", "w") as f:  # one file per rank
        json.dump(rows, f)
""")


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_mpi_ranks_report_the_hosts_norms_under_every_strategy(at_init, batch, tmp_path):
    """One job on 2 ranks, one engine per strategy in turn (one compile per rank); every
    rank reports every device's norms (they travel with the losses and byte counts)."""
    model, values = at_init
    ref = reference_norms(model, values, *batch, 2)
    script = tmp_path / "job.py"
    script.write_text(MPI_JOB.format(batch=BATCH))
    job = subprocess.run(mpi.mpiexec_command(2, [script, tmp_path / "norms"]),
                         capture_output=True, text=True, timeout=200)
    assert job.returncode == 0, job.stderr[-3000:]
    rows = [row for r in (0, 1) for row in json.loads((tmp_path / f"norms-{r}.json").read_text())]
    assert sorted({(r, s) for r, s, _, _ in rows}) == sorted(
        (r, s) for r in (0, 1) for s in ("host", "ring", "sharded", "hierarchical"))
    assert len(rows) == 16
    for _, _, splits, big in rows:
        assert splits == pytest.approx(ref[0], rel=NORM_RTOL)
        assert big == pytest.approx(ref[1], rel=NORM_RTOL)


# -- (b) the truth check ----------------------------------------------------------------
SAMPLES = 512  # the population: per-example gradients give its exact tr(Σ) and |G|^2
STEPS = 300  # random batches at the same parameters
TRUTH_BATCH, TRUTH_DEVICES = 50, 3  # 17 + 17 + 16: uneven splits
Z_MAX = 4.0  # |z| allowed between the averaged estimate and the truth


def _trained_values(model, x, y, steps=30, lr=0.1, seed=0):
    """Parameters a little way into training (plain SGD, batches of 64): fixed for the check."""
    f, rng = model.gradient_function(), np.random.default_rng(seed)
    values = model.get_values()
    for _ in range(steps):
        idx = rng.integers(0, len(x), 64)
        model.set_values(values)
        values = [v - lr * g for v, g in zip(values, f(x[idx], y[idx]))]
    return values


def exact_statistics(model, values, x, y):
    """tr(Σ) and |G|^2 of the population (x, y) at ``values``: every example's gradient
    (batch of 1, the compiled gradient function), then their mean and covariance (divided
    by the count: the population's own, which sampling with replacement draws from)."""
    model.set_values(values)
    f = model.gradient_function()
    per_example = np.empty((len(x), model.n_params))  # (D, P) float64
    for i in range(len(x)):
        flatten(f(x[i:i + 1], y[i:i + 1]), out=per_example[i])
    mean = per_example.mean(axis=0)
    trace_sigma = float(((per_example - mean) ** 2).sum(axis=1).mean())
    return trace_sigma, float(mean @ mean)


def estimated_statistics(model, values, x, y, steps=STEPS, seed=1):
    """(tr(Σ), |G|^2) estimates of ``steps`` data-parallel steps on batches drawn with
    replacement from (x, y): an array (steps, 2)."""
    rng, out = np.random.default_rng(seed), np.empty((steps, 2))
    with SerialEngine(model, TRUTH_DEVICES) as eng:
        for s in range(steps):
            idx = rng.integers(0, len(x), TRUTH_BATCH)
            r = eng.step(values, x[idx], y[idx])
            est = gradient_noise_scale(r.split_sizes, r.split_sq_norms, r.batch_sq_norm)
            out[s] = est.trace_sigma, est.grad_sq
    return out


def _population(flat):
    x, y = load_digits(flat=flat)
    idx = np.random.default_rng(0).choice(len(x), SAMPLES, replace=False)
    return x[idx], y[idx]


@pytest.fixture(scope="module")
def mlp():
    return presets.digits_model("mlp")  # 64-64-10, 4,810 parameters


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_estimator_agrees_with_brute_force_truth(name, request):
    model = request.getfixturevalue(name)
    init = model.get_values()
    try:
        x, y = _population(flat=name == "mlp")
        values = _trained_values(model, x, y)
        truth = exact_statistics(model, values, x, y)
        est = estimated_statistics(model, values, x, y)
    finally:
        model.set_values(init)  # the session's CNN stays at its initial parameters
    mean, se = est.mean(axis=0), est.std(axis=0, ddof=1) / math.sqrt(len(est))
    z = (mean - truth) / se
    report = (f"{name}: truth tr(Σ), |G|^2 = {truth}; estimated {mean} ± {se} (z = {z})")
    assert np.all(np.abs(z) < Z_MAX), report
    assert np.all(se < 0.1 * np.array(truth)), report  # the check has power: SE < 10 %
    b_truth = truth[0] / truth[1]
    assert mean[0] / mean[1] == pytest.approx(b_truth, rel=0.25), report


# -- (c) the trainer ---------------------------------------------------------------------
def test_trainer_tracks_b_simple_and_none_on_one_device(cnn, digits, tmp_path):
    x, y = digits
    histories = {}
    for n in (1, 2):
        with DataParallelTrainer(cnn.spec, n, Momentum(0.05), engine="serial",
                                 noise_beta=0.9) as tr:
            tr.fit(x, y, batch_size=32, steps=12, progress=False)
            histories[n] = tr.history
            if n == 2:
                path = tr.save(tmp_path / "ck.npz")
                noise = tr.noise_scale
            else:
                assert tr.noise_scale is None
    assert all(h["b_simple"] is None and h["grad_sq"] is None for h in histories[1])
    assert all(h["sq_norms"]["split_sizes"] == [32] for h in histories[1])
    two = histories[2]
    assert all(h["sq_norms"]["split_sizes"] == [16, 16] for h in two)
    # the recorded B_simple is the ratio of the moving averages of the two estimators
    ema = NoiseScaleEMA(0.9)
    for h in two:
        n = h["sq_norms"]
        want = ema.update(n["split_sizes"], n["split"], n["batch"])
        assert (h["b_simple"], h["trace_sigma"], h["grad_sq"]) == tuple(want)
    assert noise == want and math.isfinite(want.b_simple) and want.b_simple > 0
    # a loaded checkpoint continues the averages as an uninterrupted run would
    resumed = DataParallelTrainer(cnn.spec, 2, Momentum(0.05), engine="serial",
                                  noise_beta=0.9).load(path)
    assert resumed.noise_scale == pytest.approx(noise)


def test_trainer_refuses_a_bad_noise_beta(cnn):
    with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1\)"):
        DataParallelTrainer(cnn.spec, 2, engine="serial", noise_beta=1.0)


# -- (d) the figure ------------------------------------------------------------------------
def test_noise_scale_plot_is_labelled_and_refuses_one_device_histories():
    import matplotlib
    matplotlib.use("Agg")
    from mgpu_lab.figures import plots
    hist = [{"step": s, "b_simple": 10.0 + s, "trace_sigma": 20.0, "grad_sq": 2.0 / (1 + s)}
            for s in range(5)]
    fig = plots.noise_scale({"2 devices": hist}, machine={"cpu": "Test CPU", "cores": 2})
    ax_b, ax_e = fig.axes
    assert "(samples per batch)" in ax_b.get_ylabel() and "(nats²)" in ax_e.get_ylabel()
    assert ax_b.get_xlabel() == "training step" and fig._suptitle.get_text()
    assert list(ax_b.lines[0].get_ydata()) == [10.0, 11.0, 12.0, 13.0, 14.0]
    text = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
    assert "measured on Test CPU" in text and "mgpu_lab.statistics" in text
    one = [{"step": 0, "b_simple": None, "trace_sigma": None, "grad_sq": None}]
    with pytest.raises(ValueError, match="no noise scale: train on 2 or more devices"):
        plots.noise_scale(one)
