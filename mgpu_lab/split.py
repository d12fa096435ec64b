"""Step 1 of data parallelism: cut a batch of B samples into one split per device (N)."""
from .validate import check_n_devices

__all__ = ["split_sizes", "split_bounds", "split_batch"]


def split_sizes(batch_size, n_devices):
    """Sizes n_i of the N splits of a batch of B samples: they differ by at most one.

    The first ``B % N`` devices take one extra sample, e.g. 10 over 4 -> [3, 3, 2, 2].
    """
    n_devices = check_n_devices(n_devices, batch_size)
    base, extra = divmod(batch_size, n_devices)
    return [base + 1 if i < extra else base for i in range(n_devices)]


def split_bounds(batch_size, n_devices):
    """``[(start, stop), ...]``: device i takes samples ``start <= j < stop`` of the batch."""
    bounds, start = [], 0
    for n in split_sizes(batch_size, n_devices):
        bounds.append((start, start + n))
        start += n
    return bounds


def split_batch(x, y, n_devices):
    """``[(x_0, y_0), ..., (x_{N-1}, y_{N-1})]``: contiguous views of ``x`` and ``y``.

    Order is kept (concatenating the splits gives the batch back) and no data is copied.
    Raises ``ValueError`` if ``len(x) != len(y)``, ``n_devices < 1`` or the batch has
    fewer samples than devices.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) == 0:
        raise ValueError("cannot split an empty batch: it needs at least one sample")
    return [(x[a:b], y[a:b]) for a, b in split_bounds(len(x), n_devices)]
