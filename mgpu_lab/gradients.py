"""Step 3: turn the N devices' gradients into the gradient of the whole batch.

Notation, here and in the book: B samples in the batch, N devices, n_i samples on device
i (sum n_i = B), P parameters. Each device returns the gradient g_i of the *mean* loss
over its own split. The mean loss over the batch is sum_i (n_i / B) * loss_i, so its
gradient is the weighted sum sum_i (n_i / B) * g_i. A plain average (1/N) * sum g_i is
right for each batch only when every split has the same size (chapter 4).

``STRATEGIES`` names the two ways engines combine gradients: ``host`` (the devices send
their gradients to the host, which stacks them and updates) and ``ring`` (the devices
reduce the weighted gradients among themselves and each applies the update).
"""
import numpy as np

from ._theano import floatX

__all__ = ["STRATEGIES", "stack_gradients", "stack_losses", "mean_gradients",
           "full_batch_gradient", "all_finite"]

STRATEGIES = ("host", "ring")


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
