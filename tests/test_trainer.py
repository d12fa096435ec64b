"""The whole step: N devices train to the same parameters as one."""
import numpy as np
import pytest
from conftest import max_abs_diff

from mgpu_lab import models
from mgpu_lab.optim import Momentum
from mgpu_lab.trainer import DataParallelTrainer, batch_indices

# 20 momentum steps compound the per-step float32 round-off (~1e-7) of the re-ordered
# sums; 1e-5 absolute on parameters of order 0.1-1 is still float32 agreement.
PARAM_ATOL = 1e-5


def train(cnn, digits, n, engine, steps=20):
    with DataParallelTrainer(cnn.spec, n, Momentum(0.05), engine=engine) as tr:
        tr.fit(*digits, batch_size=50, steps=steps, progress=False)  # 50: uneven for n=3, 4
        return tr.model.get_values(), tr.history


@pytest.mark.slow
def test_twenty_steps_on_1_2_4_devices_agree(cnn, digits):
    ref, hist = train(cnn, digits, 1, "local")
    assert len(hist) == 20 and hist[-1]["loss"] < hist[0]["loss"]
    diffs = {}
    for n in (2, 4):
        values, _ = train(cnn, digits, n, "local")
        diffs[n] = max_abs_diff(values, ref)
        assert diffs[n] < PARAM_ATOL, f"{n} devices differ from 1 by {diffs[n]:.2e}"
    serial, _ = train(cnn, digits, 3, "serial")
    diffs["serial-3"] = max_abs_diff(serial, ref)
    assert diffs["serial-3"] < PARAM_ATOL
    print(f"largest parameter difference to 1 device after 20 steps: {diffs}")


def test_training_learns_the_digits(digits):
    from mgpu_lab.data import load_digits, train_test_split
    x, y = load_digits(flat=True)
    (xtr, ytr), (xte, yte) = train_test_split(x, y, seed=0)
    with DataParallelTrainer(models.mlp(n_in=64, hidden=(64,), seed=0), 2, Momentum(0.1),
                             engine="serial") as tr:
        tr.fit(xtr, ytr, batch_size=64, steps=150, progress=False)
        loss, acc = tr.evaluate(xte, yte)
    assert acc > 0.9 and loss < 0.5


def test_batch_order_is_a_function_of_seed_and_step():
    a = [batch_indices(s, 100, 30, seed=1) for s in range(7)]
    b = [batch_indices(s, 100, 30, seed=1) for s in range(7)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    epoch0 = np.concatenate(a[:3])
    assert len(set(epoch0)) == 90  # no sample twice within an epoch
    assert not np.array_equal(a[0], a[3])  # a new permutation next epoch
    with pytest.raises(ValueError, match="larger than the data set"):
        batch_indices(0, 10, 11, seed=0)


def test_unknown_engine_is_refused(cnn):
    with pytest.raises(ValueError, match="local, serial, mpi"):
        DataParallelTrainer(cnn.spec, 1, engine="gpu")


def test_fit_needs_steps_or_epochs(cnn, digits):
    with DataParallelTrainer(cnn.spec, 1, engine="serial") as tr:
        with pytest.raises(ValueError, match="exactly one"):
            tr.fit(*digits)
        tr.fit(digits[0][:100], digits[1][:100], batch_size=50, epochs=2, progress=False)
        assert tr.step_count == 4
