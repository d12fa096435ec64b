"""The memory model held against measurements: Theano's own profiler, and the largest
batch that really runs on a :class:`~mgpu_lab.engines.local.DevicePool` with a capacity.
"""
import io
import re
import warnings

import numpy as np
from tqdm.auto import tqdm

from .._theano import theano
from theano.compile.profiling import ProfileStats  # noqa: E402  (theano comes from _theano)
from ..data import random_batch
from ..engines.local import DevicePool
from ..errors import DeviceOutOfMemory
from ..models import build
from ..predict.graph import training_graph
from ..predict.memory import estimate, max_batch_size, simulate

__all__ = ["profiled_peak", "compare_with_profiler", "measured_limits"]


def profiled_peak(model, batch_sizes, seed=0, allow_gc=True):
    """``{batch: bytes}``: the peak memory Theano's profiler reports for the compiled
    gradient function (loss and all gradients), one compile, one call per batch size.

    That peak ("Max peak memory with current setting" of the profiler's memory summary)
    counts every intermediate result and output while the stack VM runs the graph with
    garbage collection, views and in-place ops; not the inputs (x, y, parameters) nor
    buffers an op keeps to itself. :func:`simulate`'s ``peak`` counts the same things.
    ``allow_gc=False``: the summary's "Max peak memory if allow_gc=False" instead
    (:func:`simulate`'s ``no_gc``). Memory profiling is switched on only inside this
    function (``change_flags``).
    """
    outputs = training_graph(model)[0]
    peaks = {}
    with theano.config.change_flags(profile=True, profile_memory=True), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CVM does not support memory profile": expected
        stats = ProfileStats(atexit_print=False)
        fn = theano.function([model.x, model.y], outputs, profile=stats,
                             name=f"profiled:{model.spec.name}")
        for b in batch_sizes:
            fn(*random_batch(model, b, seed))
            text = io.StringIO()
            stats.summary_memory(text)  # shapes of this last call
            label = r"current setting" if allow_gc else r"allow_gc=False[^\n]*"
            found = re.search(label + r"\s+CPU: (\d+)KB", text.getvalue())
            if not found:
                raise RuntimeError("Theano's memory summary has an unexpected format:\n"
                                   + text.getvalue()[:2000])
            peaks[b] = int(found.group(1)) * 1024
    return peaks


def compare_with_profiler(nets, batch_sizes):
    """Rows ``{net, batch, estimate, profiled, error_pct, device_terms, device_terms_pct}``:
    :func:`simulate`'s peak against :func:`profiled_peak` (like with like), and beside it
    gradients + activations + transient as :func:`estimate` holds them on a device (all
    gradients allocated up front, so at least the peak). ``nets``: {name: model};
    ``batch_sizes``: a tuple, or {name: tuple}."""
    rows = []
    for name, model in nets.items():
        sizes = batch_sizes[name] if isinstance(batch_sizes, dict) else batch_sizes
        for b, measured in profiled_peak(model, sizes).items():
            est = simulate(model, b).peak
            e = estimate(model, b)
            kept = e["gradients"] + e["activations"] + e["transient"]
            pct = lambda v: 100.0 * (v - measured) / measured  # noqa: E731
            rows.append({"net": name, "batch": b, "estimate": est, "profiled": measured,
                         "error_pct": pct(est), "device_terms": kept, "device_terms_pct": pct(kept)})
    return rows


# -- the batch limit on 1..N devices: measured on DevicePool, predicted for real GPUs ----
def _bisect_runs(runs, start, guess=None):
    """Largest b >= start - 1 with ``runs(b)``, for ``runs`` true up to a limit then false.

    A ``guess`` (the prediction) is tried first: if it runs and ``guess + 1`` does not,
    that bracket is the answer in two runs; otherwise double from ``start`` and bisect.
    """
    if guess and guess >= start and runs(guess) and not runs(guess + 1):
        return guess
    lo, b = start - 1, start
    while runs(b):  # double until a batch is refused
        lo, b = b, 2 * b
    hi = b
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if runs(mid) else (lo, mid)
    return lo


def measured_limits(model, memory_bytes, n_devices_list=(1, 2, 3, 4), seed=0,
                    progress=True):
    """For each N: the largest global batch that really runs on a
    :class:`~mgpu_lab.engines.local.DevicePool` of N devices with ``memory_bytes`` each,
    found by bisection (a refused batch raises ``DeviceOutOfMemory`` before any work).

    Each row also says where the memory goes: parameters + gradients (+ optimizer state)
    are held by *every* device, so N devices fit N x the activations of one device but
    less than one device with N x the memory would (``one_big_device``, predicted).
    ``x_one_device``: the global batch over the first row's per-device batch.
    """
    model = build(model)
    spec, values = model.spec, model.get_values()
    rows = []
    for n in tqdm(list(n_devices_list), desc="devices", disable=not progress):
        with DevicePool(spec, n, memory_bytes=memory_bytes) as pool:
            def runs(b):
                x, y = random_batch(model, b, seed)
                try:
                    pool.gradients(values, x, y)
                    return True
                except DeviceOutOfMemory:
                    return False
            limit = _bisect_runs(runs, start=n, guess=max_batch_size(model, memory_bytes, n))
        rows.append(_limit_row(model, memory_bytes, n, limit))
    base = rows[0]["global_batch"] / rows[0]["n_devices"] if rows and rows[0]["global_batch"] else None
    for r in rows:
        r["x_one_device"] = r["global_batch"] / base if base else float("nan")
    return rows


def _limit_row(model, memory_bytes, n, limit):
    """One row of a limits table: what a batch ``limit`` on ``n`` devices costs where."""
    per = -(-limit // n) if limit else 0  # the largest split
    e = estimate(model, max(per, 1))
    replicated = e["parameters"] + e["gradients"] + e["optimizer"]
    per_sample = estimate(model, 2)["total"] - estimate(model, 1)["total"]
    return {"n_devices": n, "memory_bytes": int(memory_bytes), "global_batch": int(limit),
            "per_device_batch": int(per), "predicted": max_batch_size(model, memory_bytes, n),
            "replicated_bytes": replicated, "replicated_share": replicated / memory_bytes,
            # what the split itself costs: activations, inputs, temporaries, workspace
            "activation_bytes": e["total"] - replicated, "bytes_per_sample": per_sample,
            "one_big_device": max_batch_size(model, n * memory_bytes)}
