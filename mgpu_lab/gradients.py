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
    Accumulates in floatX through one scratch buffer per parameter, with no temporary
    per device: at 100 MB of gradients the host's memory traffic is the cost, and the
    round-off of a sum of <= 8 float32 terms stays at the float32 level of the terms.
    """
    if len(per_device_grads) != len(split_sizes) or not per_device_grads:
        raise ValueError(f"need one split size per device: got {len(per_device_grads)} "
                         f"gradient lists and {len(split_sizes)} sizes")
    if any(n <= 0 for n in split_sizes):
        raise ValueError(f"split sizes must be positive, got {list(split_sizes)}")
    weights = (np.asarray(split_sizes, dtype=np.float64) / float(sum(split_sizes))).astype(floatX)
    first = per_device_grads[0]
    for d, grads in enumerate(per_device_grads):
        if len(grads) != len(first):
            raise ValueError(f"device {d} returned {len(grads)} gradients, device 0 {len(first)}")
        for j, (g, g0) in enumerate(zip(grads, first)):
            if np.shape(g) != np.shape(g0):
                raise ValueError(f"device {d}'s gradient {j} has shape {np.shape(g)}, "
                                 f"device 0's has {np.shape(g0)}")
    out = []
    for j in range(len(first)):
        acc = np.multiply(first[j], weights[0], dtype=floatX)
        scratch = np.empty_like(acc) if len(weights) > 1 else None
        for d in range(1, len(weights)):
            acc += np.multiply(per_device_grads[d][j], weights[d], out=scratch)
        out.append(acc)
    return out


def mean_gradients(per_device_grads):
    """The plain average of device gradients: right only for equal splits (see chapter 4)."""
    return stack_gradients(per_device_grads, [1] * len(per_device_grads))


def full_batch_gradient(model, x, y):
    """The reference: one compiled call on the whole batch, on one device."""
    return model.gradient_function()(x, y)


def all_finite(arrays):
    """True if no array holds NaN or infinity."""
    return all(np.isfinite(a).all() for a in arrays)
