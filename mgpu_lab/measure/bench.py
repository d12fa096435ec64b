"""Measured throughput of real training steps on 1..N local devices (CPU processes).

For every device count N and global batch size B the benchmark runs full training steps
(split, N devices compute, fetch, stack, SGD update, parameter broadcast) through
:class:`~mgpu_lab.trainer.DataParallelTrainer`: ``warmup`` steps are thrown away, then
``repeats`` timed runs of ``steps`` steps each give the median and spread of images/s.
Each step's time is broken into the phases of :class:`~mgpu_lab.engines.base.Timings`
(split, scatter, set_params, compute, fetch, sync, exchange, stack, update; seconds,
medians over the timed steps), as the engine timed them.

The baseline is a *bare call*: the compiled Theano function on the same batch, with no
pool around it, in a fresh process pinned to one core with one BLAS thread (as every device
is). It lives through the whole benchmark and its runs alternate with the pool's, so the
N=1 overhead compares runs made back to back. Counted FLOPs / its time is this core's
FLOP/s; the same process also measures the copy bandwidth into shared memory and a message
round trip. With those three machine numbers :mod:`mgpu_lab.predict.costmodel` predicts the local
scaling, and the benchmark reports how far the prediction is from the measurement.

The machine is shared: every row also records how many cores *other* processes used
while it was measured (``foreign_load_cores``); the printed targets warn when it is high.
"""
import contextlib
import os
import time

import numpy as np
from tqdm.auto import tqdm

from ..data import random_batch
from ..engines.base import Timings
from ..engines.pinning import PIN_ENV
from ..models import build
from ..optim import SGD
from ..predict.costmodel import predict
from ..predict.gpus import GPU
from ..predict.graph import count_flops
from ..presets import bench_model
from ..trainer import DataParallelTrainer
from ..validate import check_n_devices
from .baseline import BareCall
from .cpuload import CpuMeter
from .machine import machine_info, save_result

__all__ = ["PHASES", "measure_devices", "machine_constants", "local_device", "predict_local",
           "run", "save", "format_table", "format_targets"]

PHASES = Timings.phases()  # the step's phases, as the engines time them
LEARNING_RATE = 0.01  # small: the benchmark trains for real but only needs finite steps
# Runs during which other processes used more than this many cores are set aside when
# there are enough quiet ones: the benchmark measures the pool, not its neighbours.
QUIET_LOAD = 0.1


# -- measured: the pool ------------------------------------------------------------------
def _phases(record):
    """Phase -> seconds of one trainer history record: the engine's :class:`Timings`, plus
    ``engine`` (everything the engine did but the update) and ``step`` (the trainer's
    whole step, its own bookkeeping included)."""
    t = record["timings"]
    return {**{k: getattr(t, k) for k in PHASES}, "engine": t.total - t.update,
            "step": record["seconds"]}


def _timed_run(tr, xb, yb, steps, bar):
    """(images/s, history records) of ``steps`` training steps in a row."""
    first, t0 = len(tr.history), time.perf_counter()
    for _ in range(steps):
        tr.step(xb, yb)
        bar.update(1)
    return steps * len(xb) / (time.perf_counter() - t0), tr.history[first:]


def _configurations(devices, strategies):
    """(N, strategy) pairs: every strategy for N > 1; one device is N=1 of the first."""
    return [(n, s) for n in devices for s in (strategies if n > 1 else strategies[:1])]


def _start_trainers(stack, spec, configs, bar):
    """One trainer (and pool) per (N, strategy), workers started: spawn and compile are
    never timed."""
    trainers = {}
    for n, s in configs:
        bar.set_description(f"bench: starting {n} device(s), {s}")
        trainers[n, s] = stack.enter_context(DataParallelTrainer(spec, n, SGD(LEARNING_RATE),
                                                                 strategy=s))
        _ = trainers[n, s].engine
    return trainers


def _quiet(runs, load=lambda r: r["foreign"]):
    """The runs during which other processes used at most ``QUIET_LOAD`` cores, if there
    are at least three of them (or all runs were quiet); else every run."""
    quiet = [r for r in runs if load(r) <= QUIET_LOAD]
    return quiet if len(quiet) >= min(3, len(runs)) else runs


def _row(n, strategy, b, runs, engine):
    """One measured configuration from its runs (dicts: rate, records, foreign load, and the
    bare call made just before it): median and spread of images/s, median of every phase
    over the timed steps, and (N=1) the overhead over the bare call of the same repeat."""
    kept = _quiet(runs)
    rates = [r["rate"] for r in kept]
    q25, med, q75 = np.percentile(rates, [25, 50, 75])
    phases = [_phases(rec) for r in kept for rec in r["records"]]
    row = {"n_devices": n, "strategy": strategy, "batch_size": b, "cores": len(engine.cores),
           "oversubscribed": bool(engine.oversubscribed), "runs": len(runs), "runs_kept": len(kept),
           "foreign_load_cores": float(np.mean([r["foreign"] for r in kept])),
           "foreign_load_cores_all": float(np.mean([r["foreign"] for r in runs])),
           "images_per_s": float(med), "images_per_s_min": float(np.min(rates)),
           "images_per_s_max": float(np.max(rates)), "images_per_s_iqr": float(q75 - q25),
           "images_per_s_all_runs": float(np.median([r["rate"] for r in runs]))}
    row.update({f"t_{k}": float(np.median([p[k] for p in phases])) for k in phases[0]})
    if n == 1 and all("bare_s" in r for r in runs):  # pool run and bare call back to back
        pairs = _quiet(runs, lambda r: max(r["foreign"], r["bare_foreign"]))
        for key, phase in (("overhead", "engine"), ("step_overhead", "step")):
            ratios = [np.median([_phases(rec)[phase] for rec in r["records"]]) / r["bare_s"]
                      for r in pairs]  # median step of a run over median call of its bare run
            row[key] = float(np.median(ratios)) - 1
    return row


# -- one measurement: every (N, batch) and the bare call, interleaved ------------------------
def _warm_up(trainers, bare, batch_sizes, x, y, warmup, bar):
    bar.set_description("bench: warm-up")
    for b in batch_sizes:
        if bare and warmup:
            bare.seconds(b, warmup)
        for tr in trainers.values():
            for _ in range(warmup):  # first steps: buffers grow, caches fill
                tr.step(x[:b], y[:b])
        bar.update(warmup * (len(trainers) + bool(bare)))


def measure_devices(spec, devices, batch_sizes, x, y, warmup=2, repeats=5, steps=3, bar=None,
                    baseline=True, strategies=("host",)):
    """Measured rows, one per (N, strategy, batch size), and the bare-call baseline (or None).

    Everything starts first; after the warm-up each repeat goes round every batch size:
    the bare call and then every N, in reverse order every other repeat. So a burst of
    load from elsewhere hits all configurations alike instead of one N, each bare call sits
    next to its N=1 run, and neither always goes first.
    """
    bar = _progress(0, False) if bar is None else bar
    with contextlib.ExitStack() as stack:
        bare = stack.enter_context(BareCall(spec, max(batch_sizes))) if baseline else None
        configs = _configurations(devices, strategies)
        trainers = _start_trainers(stack, spec, configs, bar)
        _warm_up(trainers, bare, batch_sizes, x, y, warmup, bar)
        runs = {(c, b): [] for c in configs for b in batch_sizes}
        bare_runs = {b: [] for b in batch_sizes}
        for r in range(repeats):
            bar.set_description(f"bench: repeat {r + 1}/{repeats}")
            for b in batch_sizes:
                order = ["bare"] * bool(bare) + configs  # bare call next to N=1,
                for what in order if r % 2 == 0 else order[::-1]:  # before it, then after it
                    if what == "bare":
                        bare_runs[b].append(_bare_run(bare, b, steps, bar))
                        continue
                    with CpuMeter(trainers[what].engine.pids()) as meter:
                        rate, records = _timed_run(trainers[what], x[:b], y[:b], steps, bar)
                    runs[what, b].append({"rate": rate, "records": records,
                                          "foreign": meter.foreign_cores})
                if bare:  # pair each run with the bare call of the same repeat
                    for c in configs:
                        runs[c, b][-1].update(bare_runs[b][-1])
        rows = [_row(*c, b, runs[c, b], trainers[c].engine) for c, b in sorted(runs)]
        if not bare:
            return rows, None
        return rows, _baseline_summary(bare, bare_runs, trainers[configs[0]].model)


def _bare_run(bare, b, steps, bar):
    with CpuMeter(bare.pids()) as meter:
        seconds = bare.seconds(b, steps)
    bar.update(steps)
    return {"bare_s": float(np.median(seconds)), "bare_foreign": meter.foreign_cores}


def _baseline_summary(bare, bare_runs, model):
    """Bare-call seconds per batch size (median of the quiet runs), copy bandwidth and
    message round trip, all from the pinned bare-call process."""
    out = []
    for b, runs in bare_runs.items():
        kept = _quiet(runs, lambda r: r["bare_foreign"])
        out.append({"batch_size": b, "bare_s": float(np.median([r["bare_s"] for r in kept])),
                    "bare_s_all": [r["bare_s"] for r in runs], "runs_kept": len(kept),
                    "foreign_load_cores": float(np.mean([r["bare_foreign"] for r in kept]))})
    return {"bare": out, "copy_bw": bare.copy_bandwidth(4 * model.n_params),
            "latency_s": bare.round_trip(),
            "foreign_load_cores": max(b["foreign_load_cores"] for b in out)}


# -- predicted: the cost model on this machine --------------------------------------------
def local_device(flops_per_s, copy_bw, machine=None):
    """One local device (a pinned CPU core) described as the catalogue describes a GPU,
    with this machine's measured FLOP/s and shared-memory copy bandwidth."""
    machine = machine or machine_info()
    link = "shared memory (memcpy between processes)"
    return GPU("local CPU core", int(machine.get("memory_bytes") or 0), float(flops_per_s),
               link, float(copy_bw), link, float(copy_bw),
               f"measured by mgpu_lab.measure.bench on {machine['cpu']}")


def machine_constants(model, baseline):
    """This core's FLOP/s (counted FLOPs / bare-call time; median over batch sizes), the
    shared-memory copy bandwidth and the message round trip, all measured."""
    for b in baseline["bare"]:
        b["flops"] = count_flops(model, b["batch_size"])["total"]
        b["flops_per_s"] = b["flops"] / b["bare_s"]
    return {"flops_per_s": float(np.median([b["flops_per_s"] for b in baseline["bare"]])),
            "copy_bw": baseline["copy_bw"], "latency_s": baseline["latency_s"]}


def predict_local(model, rows, constants, n_cores, machine=None):
    """Add the cost model's prediction (host gather, ``n_cores`` shared) to every row."""
    device = local_device(constants["flops_per_s"], constants["copy_bw"], machine)
    one = {r["batch_size"]: r["images_per_s"] for r in rows if r["n_devices"] == 1}
    for r in rows:
        p = predict(model, device, r["n_devices"], r["batch_size"],
                    strategy="host" if r["strategy"] == "host" else "ring",
                    efficiency=1.0, latency=constants["latency_s"], cores=n_cores)
        r["predicted_images_per_s"], r["predicted_speedup"] = p.images_per_s, p.speedup
        if r["batch_size"] in one:
            r["speedup"] = r["images_per_s"] / one[r["batch_size"]]
            r["scaling_efficiency"] = r["speedup"] / r["n_devices"]
            r["speedup_error"] = p.speedup / r["speedup"] - 1
        r["images_per_s_error"] = p.images_per_s / r["images_per_s"] - 1
    return rows


# -- the whole benchmark ---------------------------------------------------------------
def _targets(rows, base):
    """The issue's ratios, from this one run: 2-device speed-up, N=1 pool overhead over the
    bare call (paired runs; split into the pool's own phases and the device's compute
    against the bare call), and the cost model's largest error on the speed-up."""
    one = [r for r in rows if r["n_devices"] == 1 and "overhead" in r]
    bare = {b["batch_size"]: b["bare_s"] for b in base["bare"]}
    return {
        "speedup_2": {r["batch_size"]: r["speedup"] for r in rows
                      if r["n_devices"] == 2 and "speedup" in r and r["strategy"] == "host"},
        "speedup_2_by_strategy": {f'{r["strategy"]}@{r["batch_size"]}': r["speedup"] for r in rows
                                  if r["n_devices"] == 2 and "speedup" in r},
        "overhead_1": {r["batch_size"]: r["overhead"] for r in one},
        "step_overhead_1": {r["batch_size"]: r["step_overhead"] for r in one},
        "overhead_1_outside_compute": {r["batch_size"]: (r["t_engine"] - r["t_compute"])
                                       / bare[r["batch_size"]] for r in one},
        "compute_1_vs_bare": {r["batch_size"]: r["t_compute"] / bare[r["batch_size"]] - 1
                              for r in one},
        "max_abs_speedup_error": max((abs(r["speedup_error"]) for r in rows
                                      if "speedup_error" in r), default=None),
        "goals": {"speedup_2": ">= 1.9 (limit 2.0)", "overhead_1": "<= 0.03",
                  "speedup_error": "within +-0.15"},
    }


def _progress(total, progress):
    return tqdm(total=total, disable=not progress, unit="step", desc="bench")


def _describe(model, devices, batch_sizes, warmup, repeats, steps, strategies):
    return {"kind": "measured", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": machine_info(), "load_average": {"before": os.getloadavg()},
            "model": {"spec": model.spec.describe(), "name": model.spec.name,
                      "n_params": model.n_params, "gradient_bytes": 4 * model.n_params},
            "settings": {"devices": devices, "batch_sizes": batch_sizes, "warmup": warmup,
                         "strategies": list(strategies),
                         "repeats": repeats, "steps": steps, "optimizer": f"sgd(lr={LEARNING_RATE})",
                         "blas_threads_per_device": int(PIN_ENV["OPENBLAS_NUM_THREADS"])}}


def run(model="cnn", devices=(1, 2, 3, 4), batch_sizes=(64, 128, 256),
        warmup=2, repeats=5, steps=3, progress=True, baseline=True, strategies=("host",)):
    """Measure every (N, batch size) and the bare call, then add the local prediction.

    ``model``: a name in :data:`mgpu_lab.presets.BENCH_MODELS`, a Model or a ModelSpec.
    Returns a JSON-able dict (see :func:`save`); nothing in it is predicted except the ``predicted_*``
    fields of the rows.
    """
    model = bench_model(model) if isinstance(model, str) else build(model)
    devices, batch_sizes = sorted(set(devices)), sorted(set(batch_sizes))
    check_n_devices(max(devices), min(batch_sizes))  # every split needs >= 1 sample
    if warmup < 0 or repeats < 1 or steps < 1:
        raise ValueError(f"need warmup >= 0, repeats >= 1, steps >= 1; got {warmup}, {repeats}, {steps}")
    strategies = list(dict.fromkeys(strategies))
    result = _describe(model, devices, batch_sizes, warmup, repeats, steps, strategies)
    per_batch = (warmup + repeats * steps) * (len(_configurations(devices, strategies)) + bool(baseline))
    x, y = random_batch(model, max(batch_sizes))
    with _progress(per_batch * len(batch_sizes), progress) as bar:
        rows, base = measure_devices(model.spec, devices, batch_sizes, x, y, warmup, repeats,
                                     steps, bar, baseline, strategies)
    result["rows"], result["load_average"]["after"] = rows, os.getloadavg()
    if base:
        result["baseline"], result["machine_constants"] = base, machine_constants(model, base)
        predict_local(model, rows, result["machine_constants"], rows[0]["cores"], result["machine"])
        result["targets"] = _targets(rows, base)
    return result


# -- saving and printing -----------------------------------------------------------------
def save(result, out_dir="results"):
    """Write ``bench-<timestamp>.json`` (everything) and ``.csv`` (one row per N x batch,
    with the machine's CPU, cores and library versions on every row). Returns both paths."""
    m = result["machine"]
    extra = {"model": result["model"]["spec"], "created": result["created"], "cpu": m["cpu"],
             "machine_cores": m["cores"], "python": m["python"], "numpy": m["numpy"],
             "theano": m["theano"], "kind": "measured (predicted_* columns: cost model)"}
    return save_result(result, out_dir, "bench", extra)[:2]


def format_table(result):
    """The measured table (and the prediction beside it) as text."""
    lines = [f"measured on {result['machine']['cpu']}, {result['machine']['cores']} cores; "
             f"model {result['model']['spec']} ({result['model']['n_params']:,} params); "
             f"1 BLAS thread per device",
             f"{'N':>2} {'strategy':>12} {'batch':>5} {'images/s':>9} {'[min-max]':>13} "
             f"{'speedup':>7} {'pred.':>6} {'err':>6} | ms/step: {'compute':>7} {'scatt':>6} "
             f"{'fetch':>5} {'sync':>5} {'exch':>5} {'stack':>5} {'update':>6} {'step':>7} "
             f"| runs kept, other load"]
    for r in result["rows"]:
        ms = {k: 1e3 * r[f"t_{k}"] for k in PHASES + ("step",)}
        pred = (f"{r['predicted_speedup']:6.2f} {100 * r['speedup_error']:+5.1f}%"
                if "speedup_error" in r else f"{'-':>6} {'-':>6}")
        lines.append(
            f"{r['n_devices']:>2} {r.get('strategy', 'host'):>12} {r['batch_size']:>5} "
            f"{r['images_per_s']:9.1f} "
            f"[{r['images_per_s_min']:5.0f}-{r['images_per_s_max']:5.0f}] "
            f"{r.get('speedup', float('nan')):7.2f} {pred} | {'':9}{ms['compute']:7.2f} "
            f"{ms['scatter'] + ms['set_params']:6.2f} {ms['fetch']:5.2f} {ms['sync']:5.2f} "
            f"{ms['exchange']:5.2f} {ms['stack']:5.2f} {ms['update']:6.2f} {ms['step']:7.2f} | "
            f"{r['runs_kept']}/{r['runs']}, {r['foreign_load_cores']:.2f} cores"
            + ("  (oversubscribed: more devices than cores)" if r["oversubscribed"] else ""))
    return "\n".join(lines)


def format_targets(result):
    """The issue's targets as ratios measured in this run (not assertions)."""
    t = result.get("targets")
    if not t:
        return "targets: not computed (run with the baseline)"
    pct = lambda v: f"{100 * v:.2f} %"  # noqa: E731
    lines = ["targets of issue 4, set for the benchmark CNN (ratios from this one run, "
             "not assertions):"]
    if t["speedup_2"]:
        s2 = ", ".join(f"{v:.3f}x at batch {b}" for b, v in t["speedup_2"].items())
        ok = "met" if min(t["speedup_2"].values()) >= 1.9 else "MISSED"
        lines.append(f"2 devices / 1 device, images/s: {s2} (target >= 1.9, limit 2.0: {ok})")
    others = {k: v for k, v in t.get("speedup_2_by_strategy", {}).items() if not k.startswith("host@")}
    if others:
        lines.append("  other strategies, 2 devices / 1 device: " + ", ".join(
            f"{k.replace('@', ' at batch ')} {v:.3f}x" for k, v in others.items()))
    if t["overhead_1"]:
        o1 = ", ".join(f"{pct(v)} at batch {b}" for b, v in t["overhead_1"].items())
        ok = "met" if max(t["overhead_1"].values()) <= 0.03 else "MISSED"
        lines.append(f"pool overhead at N=1 over a bare pinned call: {o1} (target <= 3 %: {ok})")
        parts = ", ".join(f"{pct(v)} + {pct(t['compute_1_vs_bare'][b])}" for b, v
                          in t["overhead_1_outside_compute"].items())
        lines.append(f"  ~ the pool's own phases (medians) + the device's compute against the "
                     f"bare call: {parts}")
        s1 = ", ".join(f"{pct(v)} at batch {b}" for b, v in t["step_overhead_1"].items())
        lines.append(f"whole step at N=1 (with the SGD update) over a bare call: {s1}")
    c = result["machine_constants"]
    if t["max_abs_speedup_error"] is not None:
        lines.append(f"cost model (predicted from this machine: {c['flops_per_s'] / 1e9:.2f} "
                     f"GFLOP/s per core, copy {c['copy_bw'] / 1e9:.2f} GB/s, round trip "
                     f"{1e6 * c['latency_s']:.0f} us): speed-up error max "
                     f"{pct(t['max_abs_speedup_error'])} (goal within 15 %)")
    busy = max([r["foreign_load_cores"] for r in result["rows"]]
               + [result["baseline"]["foreign_load_cores"]])
    if busy > QUIET_LOAD:
        lines.append(f"WARNING: other processes used up to {busy:.2f} cores during the runs "
                     f"kept; rerun on a quiet machine before trusting these ratios")
    else:
        lines.append(f"runs during which other processes used > {QUIET_LOAD} cores were set "
                     f"aside (columns 'runs kept'); every run is in the JSON's *_all fields")
    if any(r["oversubscribed"] for r in result["rows"]):
        lines.append("note: rows marked oversubscribed ran more devices than cores; the cost "
                     "model multiplies their compute by ceil(N / cores)")
    return "\n".join(lines)
