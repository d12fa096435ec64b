"""Bad input: each refusal names what was wrong and what would be right, changes nothing,
and (on the local engine) leaves the pool running for the next, good, batch.

Batch checks run on both engines users pick from ("serial" and the default "local"), through
``DataParallelTrainer.step``: the call a user makes.
"""
import re
import warnings

import numpy as np
import psutil
import pytest

from mgpu_lab import models
from mgpu_lab.cli import main as cli_main
from mgpu_lab.engines.local import DevicePool
from mgpu_lab.engines.serial import SerialEngine
from mgpu_lab.errors import DeviceOutOfMemory, NonFiniteGradient
from mgpu_lab.predict.memory import estimate
from mgpu_lab.optim import Momentum
from mgpu_lab.split import split_batch
from mgpu_lab.trainer import DataParallelTrainer


@pytest.fixture(scope="module", params=["serial", pytest.param("local", marks=pytest.mark.slow)])
def tr(request, cnn, digits):
    """The digits CNN on 2 devices, after one good step (so the optimizer has state)."""
    x, y = digits
    with DataParallelTrainer(cnn.spec, 2, Momentum(0.05), engine=request.param) as t:
        t.step(x[:16], y[:16])
        yield t


@pytest.fixture
def batch(digits):
    return digits[0][:16].copy(), digits[1][:16].copy()  # (16, 1, 8, 8) float32, (16,) int32


def snapshot(tr):
    return ([v.copy() for v in tr.model.get_values()], tr.opt_t,
            [[a.copy() for a in slot] for slot in tr.opt_state], tr.step_count, len(tr.history))


def assert_unchanged(tr, snap):
    values, t, state, steps, n_hist = snap
    assert all(np.array_equal(a, b) for a, b in zip(tr.model.get_values(), values, strict=True))
    assert (tr.opt_t, tr.step_count, len(tr.history)) == (t, steps, n_hist)
    for slot, before in zip(tr.opt_state, state, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(slot, before, strict=True))


def refused(tr, x, y, match, error=ValueError):
    """``tr.step(x, y)`` raises ``error`` matching ``match``; nothing changed; same engine, open."""
    engine, snap = tr.engine, snapshot(tr)
    with pytest.raises(error, match=match):
        tr.step(x, y)
    assert_unchanged(tr, snap)
    assert tr.engine is engine and not engine.closed


# -- the batch ---------------------------------------------------------------------------------
def test_x_and_y_of_different_lengths(tr, batch):
    x, y = batch
    refused(tr, x, y[:-1], "same length, got 16 images and 15 labels")
    refused(tr, x[:3], y, "same length, got 3 images and 16 labels")


def test_an_empty_batch(tr, batch):
    x, y = batch
    refused(tr, x[:0], y[:0], "the batch is empty: it needs at least one sample")


def test_more_devices_than_samples(tr, batch):
    x, y = batch
    refused(tr, x[:1], y[:1], r"a batch of 1 samples cannot be split over 2 devices.*>= 2")


@pytest.mark.parametrize("shape", [(16, 64), (16, 1, 8), (16, 3, 8, 8), (16, 1, 16, 16),
                                   (16, 1, 8, 8, 1)])
def test_images_of_the_wrong_shape_or_number_of_dimensions(tr, shape):
    x, y = np.zeros(shape, np.float32), np.zeros(16, np.int32)
    refused(tr, x, y, rf"x has shape \({', '.join(map(str, shape))},?\); "
                      r"this model takes \(batch, 1, 8, 8\)")


@pytest.mark.parametrize("bad_label", [10, -1, 255])
def test_labels_out_of_range(tr, batch, bad_label):
    x, y = batch
    y[5] = bad_label
    refused(tr, x, y, rf"labels must lie in \[0, 10\), got values from {min(bad_label, 0)} to "
                      rf"{max(bad_label, 9)}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, bool])
def test_labels_that_are_not_integers(tr, batch, dtype):
    x, y = batch
    refused(tr, x, y.astype(dtype),
            rf"labels must be integers in \[0, 10\), got dtype {np.dtype(dtype)}")


def test_labels_of_the_wrong_shape(tr, batch):
    x, y = batch
    refused(tr, x, y.reshape(16, 1), r"y has shape \(16, 1\); it must be \(16,\)")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_values_in_a_batch(tr, batch, value):
    x, y = batch
    x[3, 0, 2, 2] = x[7, 0, 0, 1] = value
    refused(tr, x, y, "x holds 2 NaN or infinite values; every input must be finite")


def test_images_that_are_not_numbers(tr, batch):
    x, y = batch
    refused(tr, x.astype(str), y, "x must hold numbers, got dtype <U")


def test_float64_images_are_cast_to_float32_with_a_one_time_warning(tr, batch):
    # the policy (validate.py): numpy's default dtype should not be a trap, so float64 is
    # accepted, cast, and the user told once; the gradient is the float32 one exactly
    x, y = batch
    values = tr.model.get_values()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own rule: once per place it is raised
        got = [tr.engine.step(values, x.astype(np.float64), y) for _ in range(2)]
    assert [str(w.message) for w in caught] == ["x is float64; casting to float32 (pass "
                                                "float32 to skip the copy)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 images and int64 labels: no warning
        ref = tr.engine.step(values, x, y.astype(np.int64))
    for result in got:
        assert result.loss == ref.loss
        assert all(np.array_equal(g, r) for g, r in zip(result.grads, ref.grads, strict=True))


# -- non-finite gradients and updates --------------------------------------------------------
def test_a_nan_gradient_stops_the_step_and_leaves_the_parameters_untouched(tr, batch):
    x, y = batch
    x[:] = 3e38  # finite input, but the first conv overflows float32: loss and gradient NaN
    refused(tr, x, y, r"step 1: the gradient \(or loss nan\) is NaN or infinite; parameters "
                      r"left untouched", error=NonFiniteGradient)


def test_an_infinite_update_leaves_parameters_and_optimizer_state_untouched(tr, batch):
    good = tr.optimizer
    tr.optimizer = Momentum(1e300)  # new parameters of ~1e297: float32 overflows to inf
    try:
        refused(tr, *batch, "the update produced NaN or infinite parameters; parameters left "
                            "untouched", error=NonFiniteGradient)
    finally:
        tr.optimizer = good


# -- devices -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, -1])
def test_fewer_than_one_device(cnn, n):
    for make in (lambda: DataParallelTrainer(cnn.spec, n), lambda: DevicePool(cnn.spec, n),
                 lambda: split_batch(np.zeros((4, 64)), np.zeros(4), n)):
        with pytest.raises(ValueError, match=f"n_devices must be >= 1, got {n}"):
            make()


@pytest.mark.parametrize("n", [2.0, "2", None, True])
def test_a_device_count_that_is_not_an_integer(cnn, n):
    for make in (lambda: DataParallelTrainer(cnn.spec, n), lambda: DevicePool(cnn.spec, n)):
        with pytest.raises(ValueError, match=rf"n_devices must be an integer >= 1, got {n!r} "
                                             rf"\({type(n).__name__}\)"):
            make()


# -- device memory -------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [DataParallelTrainer, SerialEngine, DevicePool])
def test_a_device_memory_too_small_for_one_sample_is_refused_before_any_work(cnn, make):
    one = estimate(cnn, 1)["total"]  # bytes one device needs for a split of one sample
    children_before = set(psutil.Process().children())
    with pytest.raises(DeviceOutOfMemory, match=rf"device 0: a split of 1 samples needs {one:,} "
                                                 rf"bytes .* but the device holds {one - 1:,} bytes "
                                                 r".*not even one sample fits") as err:
        make(cnn.spec, 2, memory_bytes=one - 1)
    assert (err.value.needed, err.value.memory_bytes, err.value.largest_fit) == (one, one - 1, 0)
    assert set(psutil.Process().children()) <= children_before  # no worker was started


@pytest.mark.parametrize("memory_bytes", [0, -5, "16GB", float("nan"), True])
def test_a_device_memory_that_is_not_a_positive_number(cnn, memory_bytes):
    for make in (DataParallelTrainer, SerialEngine, DevicePool):
        with pytest.raises(ValueError, match=rf"memory_bytes must be a positive number of bytes "
                                             rf"per device \(or None for no limit\), got "
                                             rf"{re.escape(repr(memory_bytes))}"):
            make(cnn.spec, 2, memory_bytes=memory_bytes)


def test_a_split_too_big_for_its_device_names_the_device_and_the_largest_split(tr, batch):
    four = estimate(tr.model, 4)["total"]
    tr.engine.memory_bytes = four  # 16 samples on 2 devices: splits of 8, but only 4 fit
    try:
        refused(tr, *batch, rf"device 0: a split of 8 samples needs [0-9,]+ bytes .* but the "
                            rf"device holds {four:,} bytes .*the largest split that fits is 4 "
                            r"samples", error=DeviceOutOfMemory)
    finally:
        tr.engine.memory_bytes = None


# -- names ---------------------------------------------------------------------------------------
def test_an_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'nope'; known models: ") as err:
        models.build(models.ModelSpec("nope"))
    assert all(name in str(err.value) for name in models.BUILDERS)


def test_an_unknown_gpu_name_lists_the_known_ones():
    from mgpu_lab.predict.gpus import get_gpu, gpu_names
    with pytest.raises(ValueError, match="unknown GPU 'GTX 9000'; known GPUs: K80, .*H100") as err:
        get_gpu("GTX 9000")
    assert all(name in str(err.value) for name in gpu_names())
    assert get_gpu(" v100 ").name == "V100"  # case and spaces do not matter


# -- the command line ------------------------------------------------------------------------------
CLI_CASES = [  # (argv, what stderr must say)
    (["train", "--devices", "0"], "argument --devices: expected a positive integer, got 0"),
    (["train", "--devices", "two"], "argument --devices: expected a positive integer, got 'two'"),
    (["train", "--steps", "-5"], "argument --steps: expected a positive integer, got -5"),
    (["train", "--batch", "0"], "argument --batch: expected a positive integer, got 0"),
    (["train", "--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
    (["train", "--engine", "gpu"], "argument --engine: invalid choice: 'gpu'"),
    (["train", "--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["train", "--lr", "fast"], "argument --lr: expected a positive number, got 'fast'"),
    (["train", "--lr", "0"], "argument --lr: expected a positive number, got 0"),
    (["train", "--lr", "-0.1"], "argument --lr: expected a positive number, got -0.1"),
    (["train", "--lr", "nan"], "argument --lr: expected a positive number, got nan"),
    (["train", "--seed", "-1"], "argument --seed: expected a seed from 0 to 2**32 - 1, got -1"),
    (["bench", "--warmup", "-1"], "argument --warmup: expected an integer >= 0, got -1"),
    (["train", "--devices", "4", "--batch", "3"],
     "--batch 3 must lie between --devices (4) and the 1438 training images"),
    (["train", "--batch", "5000"], "--batch 5000 must lie between --devices (2) and the 1438"),
    (["fly"], "invalid choice: 'fly'"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_flags_out_of_range_exit_with_code_2_and_say_why(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        cli_main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
