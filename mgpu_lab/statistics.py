"""The gradient noise scale from one data-parallel step (McCandlish et al. 2018, App. A.1).

Notation, as in :mod:`mgpu_lab.gradients`: B samples in the batch, N devices, n_i samples
on device i (sum n_i = B). G is the true gradient (the mean over the data of the
per-example gradients) and Σ their covariance. The mean gradient g_b of b samples drawn
independently has E|g_b|^2 = |G|^2 + tr(Σ)/b: the noise adds tr(Σ)/b to the squared norm.
Two batch sizes therefore give two equations for the two unknowns. A data-parallel step
has both for free: each device holds the mean gradient g_i of its n_i samples, and the
stacked gradient g is that of all B. From |g_i|^2 and |g|^2 (one float each; no gradient
moves) the two-point estimators are unbiased:

    |G|^2  ~  (B |g|^2 - n_i |g_i|^2) / (B - n_i)
    tr(Σ)  ~  (|g_i|^2 - |g|^2) / (1/n_i - 1/B)

and the *simple noise scale* is B_simple = tr(Σ)/|G|^2, the batch at which the noise in a
gradient is as large as its signal. A ratio of two noisy estimates is biased, so (as the
paper does) average the two estimators over steps first and divide the averages:
:class:`NoiseScaleEMA`.

Facts assumed: the samples of a batch are independent draws (with replacement, or from a
data set much larger than B); Σ is the covariance of single examples' gradients. A batch
drawn *without* replacement from a data set of D samples (as the trainer's epochs draw
them) has E|g_b|^2 = |G|^2 + (tr(Σ)/b)(D - b)/(D - 1) instead; then the two-point
estimators above give tr(Σ) D/(D - 1) and |G|^2 - tr(Σ)/(D - 1): |G|^2 is low by about
B_simple/D of itself. ``population=D`` undoes both (for data sets small next to B_simple).
"""
import math
from typing import NamedTuple

import numpy as np

__all__ = ["NoiseScale", "gradient_noise_scale", "NoiseScaleEMA"]


class NoiseScale(NamedTuple):
    """One estimate: ``b_simple`` = tr(Σ)/|G|^2 in samples (NaN when ``grad_sq`` <= 0,
    where the signal is not resolved), ``trace_sigma`` = tr(Σ) and ``grad_sq`` = |G|^2,
    both in squared gradient units. Either estimate may come out negative in one step:
    it is unbiased, not positive."""
    b_simple: float
    trace_sigma: float
    grad_sq: float


def _ratio(trace_sigma, grad_sq):
    return trace_sigma / grad_sq if grad_sq > 0 else math.nan


def _check_sizes(split_sizes):
    sizes = list(split_sizes)
    if len(sizes) < 2:
        raise ValueError(
            f"the noise scale needs two batch sizes, the devices' n_i and the batch's B: "
            f"with {len(sizes)} split(s) there is no second one (use 2 or more devices)")
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"split sizes must be integers >= 1 (samples per device), "
                             f"got {sizes}")
    return [int(n) for n in sizes]


def _check_sq_norm(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number (a squared norm), got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be finite and >= 0 (a squared norm), got {value}")
    return value


def gradient_noise_scale(split_sizes, split_sq_norms, batch_sq_norm, population=None):
    """Unbiased tr(Σ) and |G|^2, and B_simple, from one step's squared gradient norms.

    split_sizes: n_i, samples on each device (N >= 2 of them; B = sum n_i).
    split_sq_norms: |g_i|^2, the squared norm of device i's MEAN gradient, one per device.
    batch_sq_norm: |g|^2, that of the stacked full-batch gradient sum_i (n_i/B) g_i.
    Returns :class:`NoiseScale` ``(b_simple, trace_sigma, grad_sq)``.

    Unequal splits: each device gives its own pair of batch sizes (n_i, B), so its own
    two-point estimators (module docstring), each unbiased for its n_i. The result is
    their average weighted by n_i/B: a weighted mean of unbiased estimators is unbiased,
    and a larger split (a less noisy |g_i|^2) counts more. With equal splits this is
    exactly the paper's estimator with B_small = B/N and |G_small|^2 the devices' mean.
    ``population``: D, when each batch is drawn without replacement from D samples (module
    docstring): tr(Σ) <- tr(Σ)(D - 1)/D and |G|^2 <- |G|^2 + tr(Σ)/D; None (the default):
    independent draws, no correction.
    Raises ValueError for N < 2 (no second batch size), mismatched lengths, sizes < 1,
    norms that are negative, NaN or infinite, and a population smaller than the batch.
    """
    sizes = _check_sizes(split_sizes)
    norms = [_check_sq_norm(v, f"split_sq_norms[{i}]") for i, v in enumerate(split_sq_norms)]
    if len(norms) != len(sizes):
        raise ValueError(f"need one squared norm per split: got {len(sizes)} split sizes and "
                         f"{len(norms)} squared norms")
    big = _check_sq_norm(batch_sq_norm, "batch_sq_norm")
    batch = sum(sizes)
    trace_sigma = grad_sq = 0.0
    for n, small in zip(sizes, norms):
        weight = n / batch
        grad_sq += weight * (batch * big - n * small) / (batch - n)
        trace_sigma += weight * (small - big) / (1.0 / n - 1.0 / batch)
    if population is not None:
        D = _check_population(population, batch)
        trace_sigma *= (D - 1) / D  # the two-point estimate was tr(Σ) D/(D - 1)
        grad_sq += trace_sigma / (D - 1)  # ... and |G|^2 - tr(Σ)/(D - 1)
    return NoiseScale(_ratio(trace_sigma, grad_sq), trace_sigma, grad_sq)


def _check_population(population, batch):
    if isinstance(population, bool) or not isinstance(population, (int, np.integer)) \
            or population < batch or population < 2:
        raise ValueError(f"population must be the number of samples the batches are drawn "
                         f"from without replacement, an integer >= the batch ({batch}) and "
                         f">= 2, or None; got {population!r}")
    return int(population)


class NoiseScaleEMA:
    """B_simple over training, as the paper tracks it: exponential moving averages of the
    two unbiased estimators apart, then their ratio (the ratio of one step's noisy
    estimates is biased and often negative). ``beta`` in [0, 1) is the decay per step
    (memory of about 1/(1 - beta) steps). The averages are debiased for their zero start
    (divided by 1 - beta^t), so the first steps are not pulled towards 0.

    ``update(split_sizes, split_sq_norms, batch_sq_norm)`` adds one step and returns the
    current :class:`NoiseScale` (``b_simple`` from the averages); ``value`` is that
    estimate (None before the first update); ``steps`` counts updates.
    """

    def __init__(self, beta=0.95):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) \
                or not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be a number in [0, 1) (the EMA's decay per step), "
                             f"got {beta!r}")
        self.beta = float(beta)
        self.steps = 0
        self._trace_sigma = 0.0  # biased (zero-started) averages
        self._grad_sq = 0.0

    def update(self, split_sizes, split_sq_norms, batch_sq_norm):
        """One step's norms in; the smoothed :class:`NoiseScale` out."""
        step = gradient_noise_scale(split_sizes, split_sq_norms, batch_sq_norm)
        self.steps += 1
        self._trace_sigma = self.beta * self._trace_sigma + (1 - self.beta) * step.trace_sigma
        self._grad_sq = self.beta * self._grad_sq + (1 - self.beta) * step.grad_sq
        return self.value

    @property
    def value(self):
        """The smoothed :class:`NoiseScale`, or None before any update."""
        if not self.steps:
            return None
        debias = 1.0 - self.beta ** self.steps
        trace_sigma, grad_sq = self._trace_sigma / debias, self._grad_sq / debias
        return NoiseScale(_ratio(trace_sigma, grad_sq), trace_sigma, grad_sq)
