"""Checks on what users hand the library: each failure says what was wrong and what is right.

Policy on dtypes (documented in the book's appendix): float64 images are cast to float32
with a one-time ``UserWarning`` (numpy's default dtype should not be a trap); integer
labels of any integer dtype are cast to int32; float labels are an error, because a
label of 3.5 means a bug upstream.
"""
import warnings

import numpy as np

from ._theano import floatX

__all__ = ["check_batch", "check_n_devices"]


def check_n_devices(n_devices, batch_size=None):
    """``n_devices`` must be an integer >= 1 and (given a batch) <= the batch size."""
    if isinstance(n_devices, bool) or not isinstance(n_devices, (int, np.integer)):
        raise ValueError(f"n_devices must be an integer >= 1, got {n_devices!r} "
                         f"({type(n_devices).__name__})")
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    if batch_size is not None and batch_size < n_devices:
        raise ValueError(f"a batch of {batch_size} samples cannot be split over {n_devices} "
                         f"devices: every device needs at least one sample (use a batch of "
                         f">= {n_devices} or fewer devices)")
    return int(n_devices)


def _check_images(x, input_shape):
    x = np.asarray(x)
    if x.ndim != 1 + len(input_shape) or x.shape[1:] != tuple(input_shape):
        raise ValueError(f"x has shape {x.shape}; this model takes (batch, "
                         f"{', '.join(map(str, input_shape))})")
    if x.dtype == np.float64 and floatX == "float32":
        warnings.warn("x is float64; casting to float32 (pass float32 to skip the copy)",
                      UserWarning, stacklevel=4)
    elif not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"x must hold numbers, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=floatX)
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise ValueError(f"x holds {bad} NaN or infinite values; every input must be finite")
    return x


def _check_labels(y, n, n_classes):
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y has shape {y.shape}; it must be ({n},): one label per sample of x")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers in [0, {n_classes}), got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got values from "
                         f"{y.min()} to {y.max()}")
    return np.ascontiguousarray(y, dtype=np.int32)


def check_batch(x, y, input_shape, n_classes):
    """Validated ``(x, y)``: x (n, *input_shape) floatX and y (n,) int32, n >= 1."""
    nx, ny = len(x), len(y)
    if nx != ny:
        raise ValueError(f"x and y must have the same length, got {nx} images and {ny} labels")
    if nx == 0:
        raise ValueError("the batch is empty: it needs at least one sample")
    return _check_images(x, input_shape), _check_labels(y, nx, n_classes)
