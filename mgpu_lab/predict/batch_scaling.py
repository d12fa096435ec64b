"""The statistical batch limit: how many steps a batch of B samples needs to reach a target.

McCandlish et al. (2018, their eqs. 2.11 and 2.12) find that training to a fixed target trades steps S
against samples processed E = B * S along one hyperbola,

    (S / S_min - 1) (E / E_min - 1) = 1,                       B_crit = E_min / S_min,

where S_min is the fewest steps any batch can do it in (a huge batch: the exact gradient)
and E_min the fewest samples (a tiny batch: every sample used for a step of its own).
With E = B * S the hyperbola is the same as

    S(B) = S_min (1 + B_crit / B),         E(B) = E_min (1 + B / B_crit):

below B_crit, doubling the batch nearly halves the steps (more GPUs buy time to accuracy);
above it, the steps hardly fall and the samples nearly double (more GPUs buy throughput,
not time). At B = B_crit a run takes twice the fewest steps and twice the fewest samples.

    fit_tradeoff(batch_sizes, steps)   S_min, E_min and B_crit from a sweep's (B, S)
    steps_to_target(batch, fit)        S(B) from a fit; samples_to_target E(B) = B S(B)

Pure numpy: no Theano, no measurement (measure/critical_sweep.py measures the (B, S)).
"""
from collections import namedtuple

import numpy as np

__all__ = ["TradeOff", "fit_tradeoff", "steps_to_target", "samples_to_target"]

TradeOff = namedtuple("TradeOff", ["s_min", "e_min", "b_crit"])
TradeOff.__doc__ = ("McCandlish et al.'s trade-off: the fewest steps S_min, the fewest "
                    "samples E_min and the critical batch B_crit = E_min / S_min")


def _positive_array(values, what):
    """``values`` as a 1-D float array of finite positive numbers, or a clear error."""
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers, got {values!r}") from None
    if a.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of numbers, got shape {a.shape}")
    bad = ~(np.isfinite(a) & (a > 0))
    if bad.any():
        raise ValueError(f"{what} must all be finite and positive; got {a[bad].tolist()} "
                         f"(a batch of B samples, a count of steps: both > 0)")
    return a


def fit_tradeoff(batch_sizes, steps):
    """Fit S(B) = S_min (1 + B_crit / B) to measured ``steps`` at ``batch_sizes``.

    How: S is linear in 1/B, S = S_min + E_min * (1/B) (intercept S_min, slope
    E_min = S_min B_crit), so the fit is a linear least-squares problem with one
    answer, no starting guess and no iterations. The residuals are taken relative to
    each measured S, (S_fit - S) / S: the steps to a target scatter by a roughly
    constant fraction from seed to seed, and small batches take ten or a hundred times
    more steps, so absolute residuals would let them alone decide S_min, which only the
    large batches measure. On data that lie on the hyperbola the fit returns its S_min
    and E_min exactly (to round-off). 1/B is known exactly, so all the noise sits in S:
    fitting 1/S against 1/E instead (the paper's hyperbola made linear) would put the
    noise on both axes.

    ``batch_sizes``, ``steps``: sequences of the same length, at least 3 points with
    at least 2 distinct batch sizes, all finite and positive. Returns a
    :class:`TradeOff`. Raises ``ValueError`` on bad input and when the data do not
    describe a trade-off: steps that do not fall as B grows (E_min <= 0), or steps that
    still fall as fast as 1/B at the largest batch (S_min <= 0: B_crit lies beyond
    the batches measured).
    """
    b = _positive_array(batch_sizes, "batch_sizes")
    s = _positive_array(steps, "steps")
    if len(b) != len(s):
        raise ValueError(f"{len(b)} batch sizes but {len(s)} step counts: give one S per B")
    if len(b) < 3 or len(np.unique(b)) < 2:
        raise ValueError(f"fitting S_min and E_min needs at least 3 points at 2 or more "
                         f"distinct batch sizes (3 or more to see the fit's residuals); got "
                         f"{len(b)} point(s) at batch sizes {sorted(set(b.tolist()))}")
    # rows (1/S_i, (1/B_i)/S_i) . (S_min, E_min) = 1: relative residuals (S_fit - S_i)/S_i
    a = np.column_stack([1.0 / s, 1.0 / (b * s)])
    (s_min, e_min), *_ = np.linalg.lstsq(a, np.ones_like(s), rcond=None)
    if not e_min > 0:
        raise ValueError(f"the steps do not fall as the batch grows (fitted E_min = "
                         f"{e_min:.3g} samples <= 0): no trade-off to fit; were the runs "
                         f"given in the wrong order, or the target reached at once?")
    if not s_min > 0:
        raise ValueError(f"the steps still fall like 1/B at the largest batch ({b.max():g}): "
                         f"fitted S_min = {s_min:.3g} <= 0, so B_crit lies beyond the batches "
                         f"measured; measure larger batches or set a harder target")
    return TradeOff(float(s_min), float(e_min), float(e_min / s_min))


def _check_fit(fit):
    if not isinstance(fit, TradeOff):
        raise TypeError(f"fit must be a TradeOff from fit_tradeoff (or TradeOff(s_min, e_min, "
                        f"b_crit)), got {fit!r}")
    _positive_array([fit.s_min, fit.e_min, fit.b_crit], "a TradeOff's s_min, e_min and b_crit")
    return fit


def steps_to_target(batch, fit):
    """S(B) = S_min (1 + B_crit / B): the steps a batch of ``batch`` samples needs (a
    number or an array of batch sizes; a float: the fit knows no whole steps)."""
    fit = _check_fit(fit)
    b = _positive_array(np.atleast_1d(batch), "batch")
    out = fit.s_min * (1.0 + fit.b_crit / b)
    return float(out[0]) if np.ndim(batch) == 0 else out


def samples_to_target(batch, fit):
    """E(B) = B S(B) = E_min (1 + B / B_crit): the samples processed to reach the target."""
    steps = steps_to_target(batch, fit)
    return float(batch) * steps if np.ndim(batch) == 0 else np.asarray(batch, float) * steps
