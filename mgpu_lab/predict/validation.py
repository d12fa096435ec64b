"""How good are the cost model's predictions, measured on figures it did not see.

The catalogue calibrates one efficiency per GPU and precision on one published single-GPU
ResNet-50 figure (:mod:`mgpu_lab.predict.gpus`). Of the sources in
``data/published_throughput.csv`` only some supply those figures (*calibration sources*);
the others are *held out*: none of their figures entered the model. Tables here:

* :func:`errors_by_source`: per source, the mean absolute error of the 1-GPU throughputs
  (calibration rows left out: their error is 0 by construction), of the multi-GPU
  throughputs, and of the speed-ups (predicted speed-up against the source's own
  N-GPU / 1-GPU ratio);
* :func:`held_out_split`: which sources calibrate (any of their rows enters the model:
  a compute efficiency, or the memory efficiency's rule, :func:`memory_efficiency_rule`)
  and which are held out; :func:`one_gpu_errors`: every held-out single-GPU row with its
  error under two predictions (the FLOPs-only model before the roofline and the roofline);
  :func:`reference_ratio`: one GPU's predicted speed over another's against the same
  source's published ratio (MLPerf's H100 against its A100: the software cancels only
  insofar as both rows' stacks gain equally over the calibration recipes, an assumption:
  the two rows ran different implementations, five months apart);
* :func:`winograd_held_out`: the FLOP-count choice (direct, Winograd F(2x2,3x3),
  F(4x4,3x3)) made on one source's rows and scored on the others', for each source in
  turn. Only TensorFlow's rows have networks besides ResNet-50, so only they can decide:
  the count is chosen *in sample*, on TensorFlow's VGG-16 and ResNet-152, and the held-out
  sources (ResNet-50 only, whose calibration absorbs the factor) cannot tell the counts
  apart. The name says how the table is built, not that the choice is tested out of sample.
"""
import math

import numpy as np

from . import costmodel
from .published import compare, load, networks

__all__ = ["WINOGRAD_CHOICES", "CALIBRATION_SOURCES", "published_speedup",
           "errors_by_source", "winograd_held_out", "best_winograd", "held_out_split",
           "one_gpu_errors", "reference_ratio", "memory_efficiency_rule",
           "memory_efficiency_floor"]

WINOGRAD_CHOICES = {"direct": 1.0, "Winograd F(2x2,3x3)": costmodel.WINOGRAD_F2,
                    "Winograd F(4x4,3x3)": costmodel.WINOGRAD_F4}


def _key(r):
    return r["source_id"], r["network"], r["gpu"], r["batch_per_gpu"], r["precision"]


def published_speedup(rows):
    """{id(row): published images/s(N) / images/s(1)} for every multi-GPU row whose
    single-GPU row (same source, network, GPU, batch per GPU, precision) exists."""
    one = {_key(r): r["images_per_s"] for r in rows if r["n_gpus"] == 1}
    return {id(r): r["images_per_s"] / one[_key(r)] for r in rows
            if r["n_gpus"] > 1 and _key(r) in one}


def _calibration_sources(compared):
    return sorted({r["source_id"] for r in compared if r["calibration_row"]})


CALIBRATION_SOURCES = ("tf", "nvidia-dle")  # checked against the catalogue by a test


def _mean_abs(values):
    return float(np.mean(np.abs(values))) if len(values) else float("nan")


def errors_by_source(compared):
    """One dict per source: ``source_id``, ``role`` ('calibration source' or 'held out'),
    ``one_gpu`` and ``n_one`` (mean |error| of the 1-GPU throughputs that are not
    calibration rows, and how many), ``multi`` and ``n_multi`` (multi-GPU throughputs),
    ``speedup`` and ``n_speedup`` (predicted against published speed-up)."""
    cal = set(_calibration_sources(compared))
    pub = published_speedup(compared)
    one_pred = {_key(r): r["predicted"] for r in compared if r["n_gpus"] == 1}
    out = []
    for s in sorted({r["source_id"] for r in compared}, key=lambda s: (s not in cal, s)):
        rs = [r for r in compared if r["source_id"] == s]
        ones = [r["error"] for r in rs if r["n_gpus"] == 1 and not r["calibration_row"]]
        multi = [r["error"] for r in rs if r["n_gpus"] > 1]
        sp = [(r["predicted"] / one_pred[_key(r)]) / pub[id(r)] - 1
              for r in rs if id(r) in pub and _key(r) in one_pred]
        out.append({"source_id": s, "role": "calibration source" if s in cal else "held out",
                    "one_gpu": _mean_abs(ones), "n_one": len(ones), "multi": _mean_abs(multi),
                    "n_multi": len(multi), "speedup": _mean_abs(sp), "n_speedup": len(sp)})
    return out


def _score(compared, source=None, exclude=None):
    """Mean |error| over the rows that are not calibration rows (of ``source``, or of
    every source but ``exclude``)."""
    e = [r["error"] for r in compared if not r["calibration_row"]
         and (source is None or r["source_id"] == source)
         and (exclude is None or r["source_id"] != exclude)]
    return _mean_abs(e)


def winograd_held_out(rows=None, nets=None, choices=None):
    """The FLOP count chosen on one source and scored on the others, for each source in
    turn (the module's docstring says why this is no out-of-sample test here: only
    TensorFlow's rows tell the counts apart). Returns ``(by_choice, selection)``:

    ``by_choice``: per choice, the mean |error| on each source (calibration rows left
    out) and over all; ``selection``: for each source, the choice with the smallest error
    on that source's rows, and that choice's error on every *other* source's rows (the
    held-out error), next to the other choices' held-out errors."""
    rows = load() if rows is None else rows
    nets = nets or networks()
    choices = choices or WINOGRAD_CHOICES
    runs = {c: compare(rows, nets, winograd=w) for c, w in choices.items()}
    sources = sorted({r["source_id"] for r in rows})
    by_choice = [{"choice": c, "winograd": choices[c],
                  **{s: _score(runs[c], source=s) for s in sources}, "all": _score(runs[c])}
                 for c in choices]
    selection = []
    for s in sources:
        fit = {c: _score(runs[c], source=s) for c in choices}
        best = min(fit, key=fit.get)
        if max(fit.values()) - min(fit.values()) < 1e-9:  # only ResNet-50: the count cancels
            best = "tie"
        held = {c: _score(runs[c], exclude=s) for c in choices}
        selection.append({"selected_on": s, "choice": best,
                          "error_on_source": fit.get(best, min(fit.values())),
                          "held_out_error": held.get(best, float("nan")),
                          **{f"held_out[{c}]": held[c] for c in choices}})
    return by_choice, selection


def best_winograd(selection, choices=None):
    """The choice with the smallest held-out error averaged over the selection sources
    (each choice scored, for each source, on all the *other* sources' rows). The rows
    chosen on a ResNet-50-only source hold out TensorFlow's VGG-16 and ResNet-152, the
    figures the count was looked for on, so this mean is no out-of-sample score."""
    choices = choices or WINOGRAD_CHOICES
    mean = {c: float(np.mean([s[f"held_out[{c}]"] for s in selection])) for c in choices}
    return min(mean, key=mean.get), mean


def implied_link_bandwidth(row, nets, winograd=None, lo=1e8, hi=1e12):
    """The peer-link bandwidth (bytes/s) at which the model would reproduce ``row``'s
    published images/s, all else as in :func:`mgpu_lab.predict.published.compare`
    (bisection on a log scale); None if no bandwidth in [lo, hi] reaches it."""
    from dataclasses import replace

    from .gpus import get_gpu
    gpu = get_gpu(row["gpu"])

    def predicted(bw):
        r = dict(row, gpu=replace(gpu, peer_bw=bw))
        return compare([r], nets, winograd=winograd)[0]["predicted"]
    if not predicted(lo) <= row["images_per_s"] <= predicted(hi):
        return None
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if predicted(mid) < row["images_per_s"] else (lo, mid)
    return (lo * hi) ** 0.5


__all__ += ["implied_link_bandwidth"]


def held_out_split(compared):
    """{"calibration": sources whose rows enter the model, "held out": the others} (sorted
    lists). A source calibrates when any of its rows is a calibration row: those figures
    fix the compute efficiencies and, through them, the memory efficiency
    (:func:`memory_efficiency_rule` reads the catalogue's calibrations, nothing else)."""
    cal = set(_calibration_sources(compared))
    return {"calibration": sorted(cal),
            "held out": sorted({r["source_id"] for r in compared} - cal)}


def one_gpu_errors(before, after):
    """One dict per single-GPU row that is no calibration row: the row's source, network,
    GPU, batch, precision and published images/s, with ``before`` and ``after``
    (:func:`mgpu_lab.predict.published.compare` outputs of the same rows) predictions and
    errors, and the source's ``role``."""
    roles = {s: role for role, ss in held_out_split(after).items() for s in ss}
    out = []
    for b, a in zip(before, after):
        if a["n_gpus"] != 1 or a["calibration_row"]:
            continue
        out.append({k: a[k] for k in ("source_id", "network", "gpu", "batch_per_gpu",
                                      "precision", "images_per_s")}
                   | {"role": roles[a["source_id"]], "before": b["predicted"],
                      "error_before": b["error"], "after": a["predicted"],
                      "error_after": a["error"]})
    return out


def reference_ratio(compared, gpu, reference, source_id):
    """``gpu``'s images/s over ``reference``'s, predicted and published, for the rows of
    ``source_id`` that have both (same network, precision and GPU count): a dict with
    ``published``, ``predicted`` and ``error`` (predicted / published - 1). What the two
    rows' software adds or loses cancels in the ratio only where it is common to both (an
    assumption when the two rows ran different software, as MLPerf's A100 and H100 did)."""
    rows = [r for r in compared if r["source_id"] == source_id]
    pairs = [(r, q) for r in rows for q in rows if r["gpu"] == gpu and q["gpu"] == reference
             and (r["network"], r["precision"], r["n_gpus"]) ==
             (q["network"], q["precision"], q["n_gpus"])]
    if not pairs:
        raise ValueError(f"{source_id!r} has no rows of both {gpu} and {reference} with the "
                         "same network, precision and number of GPUs")
    r, q = pairs[0]
    published = r["images_per_s"] / q["images_per_s"]
    predicted = r["predicted"] / q["predicted"]
    return {"gpu": gpu, "reference": reference, "source_id": source_id,
            "network": r["network"], "precision": r["precision"], "n_gpus": r["n_gpus"],
            "published": published, "predicted": predicted, "error": predicted / published - 1}


def memory_efficiency_rule(step=0.01):
    """The memory efficiency the catalogue uses, recomputed: the smallest multiple of
    ``step`` at which no compute efficiency calibrated on a published figure (each figure
    once: a carried figure is its own GPU's) exceeds it, with the default FLOP count.
    Returns (value, {(GPU, precision): compute efficiency at that value})."""
    from .gpus import CATALOGUE
    figures = [(g, p, c) for g in CATALOGUE.values() for p, c in g.calibration.items()
               if not c.carried_from]

    def worst(m):
        return max(costmodel.calibrated_efficiency(g, p, c, memory_efficiency=m)
                   for g, p, c in figures)
    lo, hi = 0.3, 1.0  # worst(m) - m falls as m rises; at 0.3 some figure is impossible
    for _ in range(40):
        mid = (lo + hi) / 2
        try:
            lo, hi = (mid, hi) if worst(mid) > mid else (lo, mid)
        except ValueError:  # too low for some figure even at the full peak
            lo = mid
    value = round(math.ceil(hi / step - 1e-9) * step, 10)
    return value, {(g.name, p): costmodel.calibrated_efficiency(g, p, c, memory_efficiency=value)
                   for g, p, c in figures}


def memory_efficiency_floor(gpu, precision, cal=None):
    """The lowest memory efficiency at which the roofline can give ``gpu``'s published
    figure at ``precision`` back at all: the one where its compute efficiency reaches 1
    (the full peak); below it even free arithmetic would leave the step too slow."""
    lo, hi = 0.01, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        try:
            costmodel.calibrated_efficiency(gpu, precision, cal, memory_efficiency=mid)
            hi = mid
        except ValueError:
            lo = mid
    return hi
