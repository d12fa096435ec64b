"""The local engine: N worker processes give the serial engine's gradients, and die with the pool."""
import numpy as np
import psutil
import pytest
from conftest import GRAD_ATOL, GRAD_RTOL

from mgpu_lab.engines.local import DevicePool
from mgpu_lab.engines.serial import SerialEngine


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_pool_matches_serial_engine(cnn, digits, n):
    x, y = digits[0][:53], digits[1][:53]  # 53 splits unevenly for n = 2, 3, 4
    values = cnn.get_values()
    with SerialEngine(cnn.spec, n) as serial:
        ref = serial.gradients(values, x, y)
    with DevicePool(cnn.spec, n) as pool:
        got = pool.gradients(values, x, y)
        assert got.split_sizes == ref.split_sizes
        assert len(got.device_seconds) == n and all(t > 0 for t in got.device_seconds)
        for g, r in zip(got.grads, ref.grads):
            np.testing.assert_allclose(g, r, atol=GRAD_ATOL, rtol=GRAD_RTOL)
        assert abs(got.loss - ref.loss) < 1e-5
        if n == 2:  # a batch larger than the pool's first buffer: the buffer grows
            big = pool.gradients(values, digits[0][:300], digits[1][:300])
            with SerialEngine(cnn.spec, 2) as serial:
                ref_big = serial.gradients(values, digits[0][:300], digits[1][:300])
            for g, r in zip(big.grads, ref_big.grads):
                np.testing.assert_allclose(g, r, atol=GRAD_ATOL, rtol=GRAD_RTOL)
        pids = pool.pids()
        assert len(set(pids)) == n and all(psutil.pid_exists(p) for p in pids)
    assert all(gone(p) for p in pids)


@pytest.mark.slow
def test_no_worker_survives_an_exception(cnn, digits):
    with pytest.raises(RuntimeError, match="boom"):
        with DevicePool(cnn.spec, 2) as pool:
            pids = pool.pids()
            pool.gradients(cnn.get_values(), digits[0][:8], digits[1][:8])
            raise RuntimeError("boom")
    assert all(gone(p) for p in pids)
