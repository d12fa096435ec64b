"""Step 1 of data parallelism: cut a batch into one split per device."""
import numpy as np

from .validate import check_n_devices

__all__ = ["split_sizes", "split_batch"]


def split_sizes(batch_size, n_devices):
    """Sizes of the ``n_devices`` splits of a batch: they differ by at most one.

    The first ``batch_size % n_devices`` devices take one extra sample, e.g.
    10 over 4 -> [3, 3, 2, 2].
    """
    n_devices = check_n_devices(n_devices, batch_size)
    base, extra = divmod(batch_size, n_devices)
    return [base + 1 if i < extra else base for i in range(n_devices)]


def split_batch(x, y, n_devices):
    """``[(x_0, y_0), ..., (x_{n-1}, y_{n-1})]``: contiguous views of ``x`` and ``y``.

    Order is kept (concatenating the splits gives the batch back) and no data is copied.
    Raises ``ValueError`` if ``len(x) != len(y)``, ``n_devices < 1`` or the batch has
    fewer samples than devices.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) == 0:
        raise ValueError("cannot split an empty batch: it needs at least one sample")
    bounds = np.cumsum([0] + split_sizes(len(x), n_devices))
    return [(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
