"""Measured device memory: each worker's resident memory under each strategy.

    run(n_devices=2, nbytes=40e6, optimizer="adam", steps=3)
        an MLP of about ``nbytes / 4`` parameters, trained a few steps under each
        strategy on the pool; per strategy, every worker's resident set (psutil, after
        the steps), the bytes its arrays hold (``engine.device_memory()``, a count), and
        the memory model's prediction of the differences between strategies
    format_table(result)   the result as text

The runtime every worker has (the interpreter, Theano, the compiled function, its
activations) is the host gather's worker; what the strategies add on top of it is what the
memory model predicts: ring - host = slots * 4P (the optimizer state the ring's devices
hold) + two mailbox packets (its own and its neighbour's), ring - sharded = slots * 4P * (1 - 1/N) (ZeRO-1's saving).
"""
import gc
from datetime import datetime

import numpy as np
from tqdm.auto import tqdm

from ..data import random_batch
from ..optim import make_optimizer
from ..predict import memory
from ..presets import sized_mlp
from ..trainer import DataParallelTrainer
from .machine import machine_info

__all__ = ["run", "format_table", "STRATEGIES"]

STRATEGIES = ("host", "ring", "sharded")
MiB = 2 ** 20


def _measure(model, n_devices, optimizer, strategy, steps, batch_size):
    x, y = random_batch(model, batch_size, seed=0)
    with DataParallelTrainer(model.spec, n_devices, make_optimizer(optimizer, 1e-4),
                             strategy=strategy) as tr:
        for _ in range(steps):
            tr.step(x, y)
        rss, held = tr.engine.device_rss(), tr.engine.device_memory()
    gc.collect()
    return {"strategy": strategy, "rss": rss, "held": held}


def run(n_devices=2, nbytes=40e6, optimizer="adam", steps=3, batch_size=64,
        strategies=STRATEGIES, progress=True):
    """Every worker's resident memory per strategy, beside the memory model's differences."""
    model = sized_mlp(nbytes)
    P, slots = model.n_params, memory.OPTIMIZER_SLOTS[optimizer]
    rows = [_measure(model, n_devices, optimizer, s, steps, batch_size)
            for s in tqdm(strategies, desc="strategies", disable=not progress)]
    by = {r["strategy"]: r for r in rows}
    predicted = {}
    state = {s: memory.predicted_device_memory(model, n_devices, optimizer, k)
             for s, k in (("ring", 0), ("sharded", 1))}
    if "host" in by and "ring" in by:
        mailbox = max(h["scratch"] for h in by["ring"]["held"])
        predicted["ring - host"] = max(d["optimizer"] for d in state["ring"]) + 2 * mailbox
    if "ring" in by and "sharded" in by:
        predicted["ring - sharded"] = (np.mean([d["optimizer"] for d in state["ring"]])
                                       - np.mean([d["optimizer"] for d in state["sharded"]]))
    measured = {}
    for key in predicted:
        a, b = key.split(" - ")
        measured[key] = float(np.mean(by[a]["rss"]) - np.mean(by[b]["rss"]))
    return {"created": datetime.now().isoformat(timespec="seconds"),
            "machine": machine_info(), "n_devices": n_devices, "n_params": P,
            "optimizer": optimizer, "slots": slots, "steps": steps, "batch_size": batch_size,
            "rows": rows, "predicted": predicted, "measured": measured}


def format_table(result):
    """Per strategy the workers' resident memory; then measured against predicted."""
    # lines within 88 characters, the book's page width (mgpu_lab.figures.tables.WIDTH)
    lines = [f"{result['n_devices']} devices, MLP of {result['n_params']:,} parameters "
             f"(4P = {4 * result['n_params'] / MiB:.1f} MiB), {result['optimizer']}:",
             "resident memory per worker (psutil), MiB",
             f"{'strategy':>9} | " + " ".join(f"{'device ' + str(d):>9}"
                                             for d in range(result["n_devices"]))
             + f" | {'counted':>9}"]
    for r in result["rows"]:
        counted = max(sum(h.values()) for h in r["held"]) / MiB
        lines.append(f"{r['strategy']:>9} | " + " ".join(f"{v / MiB:9.1f}" for v in r["rss"])
                     + f" | {counted:9.1f}")
    lines.append("difference (means over devices), MiB: measured / predicted (error)")
    for key, pred in result["predicted"].items():
        got = result["measured"][key]
        lines.append(f"{key:>15}: {got / MiB:7.1f} / {pred / MiB:7.1f} ({100 * (got / pred - 1):+.1f} %)")
    return "\n".join(lines)
