"""Step 3: turn per-device gradients into the gradient of the whole batch.

Each device returns the gradient of the *mean* loss over its own split of n_i samples.
The mean loss over the batch of N = sum n_i samples is sum_i (n_i / N) * loss_i, so its
gradient is the weighted sum sum_i (n_i / N) * g_i. A plain average (1/n) * sum g_i is
only right when every split has the same size.
"""
import numpy as np

from ._theano import floatX

__all__ = ["stack_gradients", "mean_gradients", "full_batch_gradient", "all_finite"]


def stack_gradients(per_device_grads, split_sizes):
    """sum_i (n_i / N) g_i for each parameter: the gradient of the full-batch mean loss.

    per_device_grads: one list per device, each a list of arrays shaped like the params.
    split_sizes: n_i, the number of samples each device's gradient was averaged over.
    Accumulates in float64 and returns floatX arrays.
    """
    if len(per_device_grads) != len(split_sizes) or not per_device_grads:
        raise ValueError(f"need one split size per device: got {len(per_device_grads)} "
                         f"gradient lists and {len(split_sizes)} sizes")
    if any(n <= 0 for n in split_sizes):
        raise ValueError(f"split sizes must be positive, got {list(split_sizes)}")
    total = float(sum(split_sizes))
    first = per_device_grads[0]
    out = [np.zeros(np.shape(g), dtype=np.float64) for g in first]
    for d, (grads, n) in enumerate(zip(per_device_grads, split_sizes)):
        if len(grads) != len(first):
            raise ValueError(f"device {d} returned {len(grads)} gradients, device 0 {len(first)}")
        for acc, g in zip(out, grads):
            acc += (n / total) * np.asarray(g)  # broadcasting error if shapes differ
    return [acc.astype(floatX) for acc in out]


def mean_gradients(per_device_grads):
    """The plain average of device gradients: right only for equal splits (see chapter 4)."""
    return stack_gradients(per_device_grads, [1] * len(per_device_grads))


def full_batch_gradient(model, x, y):
    """The reference: one compiled call on the whole batch, on one device."""
    return model.gradient_function()(x, y)


def all_finite(arrays):
    """True if no array holds NaN or infinity."""
    return all(np.isfinite(a).all() for a in arrays)
