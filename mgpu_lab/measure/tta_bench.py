"""Time to target, measured on this machine's devices, beside its prediction.

For 1 and 2 local devices (worker processes, :class:`~mgpu_lab.engines.local.DevicePool`
through :class:`~mgpu_lab.trainer.DataParallelTrainer`, host gather) and two batch sizes,
train the critical sweep's network to the sweep's target with the learning rate the sweep
tuned for that batch (:mod:`mgpu_lab.measure.critical_sweep`: the same initial weights,
batches and check after every step as its runs of seed 0), and time it:

    measured   steps S to the target, and the seconds of those S training steps (the
               trainer's own step times; the validation checks between them are timed
               apart and not counted, as a GPU run's time to target would not count them);
               each run ``repeats`` times, the median kept
    predicted  S from the trade-off fitted on the sweep (S(B) = S_min (1 + B_crit / B)),
               times the cost model's step for this machine
               (:func:`mgpu_lab.predict.costmodel.predict` on
               :func:`mgpu_lab.measure.bench.local_device`: one core's FLOP/s, the shared-
               memory copy bandwidth and a message round trip, measured first by a bare call)

    run(...)              the measurement; returns data (JSON-able, with provenance)
    save(result), load()  data/time_to_target.json
    format_table(result)  the rows as text within 88 columns
    python -m mgpu_lab.measure.tta_bench   run, print and save (make time-to-target)
"""
import textwrap
import time
from datetime import datetime

import numpy as np
from tqdm.auto import tqdm

from ..data import DATA_DIR, load_digits, train_test_split
from ..engines.pinning import cores
from ..optim import SGD
from ..predict.batch_scaling import TradeOff, steps_to_target
from ..predict.costmodel import predict
from ..presets import digits_model
from ..trainer import DataParallelTrainer, batch_indices
from . import critical_sweep
from .baseline import BareCall
from .bench import local_device, machine_constants
from .cpuload import CpuMeter
from .machine import load_data, machine_info, machine_label, save_data

__all__ = ["DATA_FILE", "COMMAND", "DEFAULTS", "run", "save", "load", "format_table"]

DATA_FILE = DATA_DIR / "time_to_target.json"
COMMAND = "make time-to-target"  # python -m mgpu_lab.measure.tta_bench
# two batches of the sweep, one below its B_crit (22 samples in data/critical_batch.json)
# and one far above; seed 0, the sweep's first seed; bare-call repeats for the constants
# repeats: runs of each (N, B), the same steps each time; their median time is kept (the
# machine is shared: one run can meet a burst of other load)
DEFAULTS = {"devices": (1, 2), "batch_sizes": (8, 256), "seed": 0, "bare_steps": 20,
            "repeats": 3}
WARMUP = 3  # gradient calls before the timed steps: the workers start and warm up


def _sweep_rows(sweep, batch_sizes):
    """{B: the sweep's row} for each asked batch, which must have a tuned rate."""
    rows = {r["batch"]: r for r in sweep["rows"]}
    for b in batch_sizes:
        if b not in rows or rows[b]["lr"] is None:
            have = [r["batch"] for r in sweep["rows"] if r["lr"] is not None]
            raise ValueError(f"batch {b}: the sweep has no tuned learning rate for it; it has "
                             f"one for {have}")
    return {b: rows[b] for b in batch_sizes}


def _constants(spec, model, batch_sizes, steps, bar):
    """One core's FLOP/s (bare calls at each batch), copy bandwidth, message round trip."""
    with BareCall(spec, max(batch_sizes)) as bare:
        bare.seconds(max(batch_sizes), 2)  # warm-up
        rows = []
        for b in batch_sizes:
            with CpuMeter(bare.pids()) as meter:
                s = bare.seconds(b, steps)
            rows.append({"batch_size": b, "bare_s": float(np.median(s)),
                         "foreign_load_cores": meter.foreign_cores})
            bar.update(1)
        base = {"bare": rows, "copy_bw": bare.copy_bandwidth(4 * model.n_params),
                "latency_s": bare.round_trip()}
    return base, machine_constants(model, base)


def _train(spec, n, batch, lr, seed, data, target, budget, bar):
    """Steps to ``target`` on ``n`` local devices: the sweep's protocol for ``seed``."""
    (x, y), (xv, yv) = data
    with DataParallelTrainer(spec, n, SGD(lr), engine="local") as tr:
        first = batch_indices(0, len(x), batch, seed)
        for _ in range(WARMUP):  # start the workers; the gradient alone changes nothing
            tr.engine.gradients(tr.model.get_values(), x[first], y[first])
        tr.evaluate(xv, yv)  # compile the host's evaluation
        eval_s, steps, loss = 0.0, None, None
        with CpuMeter(tr.engine.pids()) as meter:
            for t in range(budget):
                idx = batch_indices(t, len(x), batch, seed)
                tr.step(x[idx], y[idx])
                t0 = time.perf_counter()
                loss = float(tr.evaluate(xv, yv)[0])
                eval_s += time.perf_counter() - t0
                bar.update(1)
                if loss <= target:
                    steps = t + 1
                    break
        seconds = [h["seconds"] for h in tr.history]
    return {"steps": steps, "train_s": float(np.sum(seconds)),
            "step_s": float(np.median(seconds)), "eval_s": eval_s, "final_loss": loss,
            "foreign_load_cores": meter.foreign_cores}


def _repeat(spec, n, batch, lr, seed, data, target, budget, bar, repeats):
    """:func:`_train` ``repeats`` times: the steps of the first run (every run takes the
    same ones: same weights, batches and arithmetic), the median of each time."""
    runs = [_train(spec, n, batch, lr, seed, data, target, budget, bar) for _ in range(repeats)]
    if len({r["steps"] for r in runs}) != 1:
        raise RuntimeError(f"N={n}, B={batch}: the repeats took different steps "
                           f"{[r['steps'] for r in runs]}; the runs should be identical")
    med = {k: float(np.median([r[k] for r in runs]))
           for k in ("train_s", "step_s", "eval_s", "foreign_load_cores")}
    return {**runs[0], **med, "train_s_runs": [r["train_s"] for r in runs]}


def run(sweep=None, progress=True, **settings):
    """Measure and predict (module docstring). ``sweep``: the critical sweep's result
    (default :func:`critical_sweep.load`); ``settings`` update :data:`DEFAULTS`."""
    cfg = {**DEFAULTS, **settings}
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(DEFAULTS)}")
    sweep = sweep or critical_sweep.load()
    if not sweep.get("fit"):
        raise ValueError("the sweep has no fitted trade-off (fewer than 3 batches reached the target)")
    rows, fit = _sweep_rows(sweep, cfg["batch_sizes"]), TradeOff(**{
        k: sweep["fit"][k] for k in TradeOff._fields})
    name, seed, t0 = sweep["model"]["name"], int(cfg["seed"]), time.perf_counter()
    model = digits_model(name, seed=seed)
    x, y = load_digits(flat=name != "cnn")
    data = train_test_split(x, y, seed=0)
    target = sweep["target"]["value"]
    budget = int(sweep["budget"])
    total = len(cfg["batch_sizes"]) + cfg["repeats"] * len(cfg["devices"]) * sum(
        int(steps_to_target(b, fit)) for b in cfg["batch_sizes"])
    with tqdm(total=total, desc="time to target", unit="step", disable=not progress) as bar:
        base, const = _constants(model.spec, model, cfg["batch_sizes"], cfg["bare_steps"], bar)
        device = local_device(const["flops_per_s"], const["copy_bw"])
        out = []
        for n in cfg["devices"]:
            for b in cfg["batch_sizes"]:
                lr = rows[b]["lr"]
                m = _repeat(model.spec, n, b, lr, seed, data, target, budget, bar,
                            cfg["repeats"])
                p = predict(model, device, n, b, strategy="host", efficiency=1.0,
                            latency=const["latency_s"], cores=len(cores()))
                s_pred = steps_to_target(b, fit)
                out.append({"n_devices": n, "batch": b, "lr": lr, **m,
                            "steps_sweep_seed": _seed_steps(rows[b], sweep, seed),
                            "predicted_steps": s_pred, "predicted_step_s": p.step_s,
                            "predicted_s": s_pred * p.step_s,
                            "measured_s": m["train_s"] if m["steps"] else None})
    return {"kind": "measured", "created": datetime.now().isoformat(timespec="seconds"),
            "command": COMMAND, "seconds": round(time.perf_counter() - t0, 1),
            "machine": machine_info(), "machine_label": machine_label(),
            "model": {"name": name, "describe": model.spec.describe(),
                      "n_params": model.n_params},
            "engine": "local", "strategy": "host", "optimizer": "sgd", "seed": seed,
            "repeats": cfg["repeats"],
            "target": sweep["target"], "budget": budget,
            "sweep": {"created": sweep["created"], "library_hash": sweep["library_hash"],
                      "fit": sweep["fit"]},
            "baseline": base, "machine_constants": const,
            "prediction": "S: the sweep's fitted trade-off; step: mgpu_lab.predict.costmodel."
                          "predict on the measured local device (efficiency 1, host gather, "
                          "the devices sharing this machine's cores)",
            "rows": out}


def _seed_steps(row, sweep, seed):
    """The sweep's own steps for ``seed`` at this batch (serial engine, its devices)."""
    by_seed = row.get("steps_by_seed") or []
    seeds = list(sweep.get("seeds", []))
    return by_seed[seeds.index(seed)] if seed in seeds and seeds.index(seed) < len(by_seed) \
        else None


def save(result, path=DATA_FILE):
    """Write ``result`` as JSON, atomically (:func:`~.machine.save_data`)."""
    return save_data(result, path)


def load(path=DATA_FILE):
    """The saved measurement (:func:`run`'s dict)."""
    return load_data(path, COMMAND)


def format_table(result):
    """Measured beside predicted, one row per (devices, batch), within 88 columns. A step's
    median and its mean (the time to target over the steps): the time to target sums every
    step, so a tail of slow steps counts in full."""
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"{'N':>2} {'B':>5} {'lr':>6} {'S':>6} {'S pred':>7} {'med ms':>7} {'mean ms':>7} "
             f"{'pred ms':>7} {'time s':>7} {'pred s':>7} {'other load':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['n_devices']:>2} {r['batch']:>5} {r['lr']:>6.3g} "
                     f"{fmt(r['steps'], 'd'):>6} {r['predicted_steps']:>7.1f} "
                     f"{1e3 * r['step_s']:>7.3f} "
                     f"{fmt(r['measured_s'] and 1e3 * r['measured_s'] / r['steps'], '.3f'):>7} "
                     f"{1e3 * r['predicted_step_s']:>7.3f} "
                     f"{fmt(r['measured_s'], '.3f'):>7} {r['predicted_s']:>7.3f} "
                     f"{r['foreign_load_cores']:>10.2f}")
    lines += textwrap.wrap(f"{result['machine_label']}; {result['created']}", 88)
    return "\n".join(lines)


def main():
    """Run with the defaults and a progress bar, print the table, save DATA_FILE."""
    result = run()
    print(format_table(result))
    print(f"saved: {save(result)}")


if __name__ == "__main__":
    main()
