"""Step 3: turn the N devices' gradients into the gradient of the whole batch.

Notation, here and in the book: B samples in the batch, N devices, n_i samples on device
i (sum n_i = B), P parameters. Each device returns the gradient g_i of the *mean* loss
over its own split. The mean loss over the batch is sum_i (n_i / B) * loss_i, so its
gradient is the weighted sum sum_i (n_i / B) * g_i. A plain average (1/N) * sum g_i is
right for each batch only when every split has the same size (chapter 4).

:func:`split_weights` is the one place the weights n_i / B are computed: the host's
stacking here and every strategy in :mod:`mgpu_lab.engines.strategies` (where devices
scale their own gradient before reducing) use it, so all agree to the last bit.
"""
import numpy as np

from ._theano import floatX

__all__ = ["split_weights", "stack_gradients", "stack_losses", "mean_gradients",
           "full_batch_gradient", "all_finite"]

def split_weights(split_sizes):
    """n_i / B for each split, as floatX (computed in float64, rounded once)."""
    if not len(split_sizes) or any(n <= 0 for n in split_sizes):
        raise ValueError(f"split sizes must be positive, one per device, got {list(split_sizes)}")
    sizes = np.asarray(split_sizes, dtype=np.float64)
    return (sizes / sizes.sum()).astype(floatX)


def stack_gradients(per_device_grads, split_sizes):
    """sum_i (n_i / B) g_i for each parameter: the gradient of the full-batch mean loss.

    per_device_grads: one list per device, each a list of arrays shaped like the params.
    split_sizes: n_i, the number of samples each device's gradient was averaged over.
    Accumulates in floatX through one scratch buffer per parameter, with no temporary
    per device: at 100 MB of gradients the host's memory traffic is the cost, and the
    round-off of a sum of <= 8 float32 terms stays at the float32 level of the terms.
    """
    if len(per_device_grads) != len(split_sizes) or not per_device_grads:
        raise ValueError(f"need one split size per device: got {len(per_device_grads)} "
                         f"gradient lists and {len(split_sizes)} sizes")
    weights = split_weights(split_sizes)
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


def stack_losses(losses, split_sizes):
    """sum_i (n_i / B) loss_i: the batch's mean loss from the N splits' mean losses."""
    return float(np.dot(losses, split_sizes) / sum(split_sizes))


def mean_gradients(per_device_grads):
    """The plain average of device gradients: right only for equal splits (see chapter 4)."""
    return stack_gradients(per_device_grads, [1] * len(per_device_grads))


def full_batch_gradient(model, x, y):
    """The reference: one compiled call on the whole batch, on one device."""
    return model.gradient_function()(x, y)


def all_finite(arrays):
    """True if no array holds NaN or infinity."""
    return all(np.isfinite(a).all() for a in arrays)
