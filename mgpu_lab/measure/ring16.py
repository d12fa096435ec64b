"""The 16-bit ring, measured: float16 on the wire against float32, on the pool.

Trains the digits CNN (``presets.digits_model("cnn")``) for ``steps`` steps three times
from the same start and the same batches: the host gather on the serial engine (the
float32 reference: the stacked gradient, no transport), the float32 ring and the
``ring16`` strategy on a :class:`~mgpu_lab.engines.local.DevicePool` of ``n_devices``.
It records each step's bytes per device (``StepResult.bytes``, counted by the pool's
links) beside the model's ``bytes_per_device``, the parameters' difference from the
reference after every step, how far the reference's parameters moved from the start (the
scale to hold that difference against), the final loss, accuracy and number of digits
right, and where float16 rounds what crossed the wire in the first step.

What crossed the wire is replayed exactly (:func:`ring16_replay`, the schedule of
:func:`mgpu_lab.collectives.ring_schedule`, as ``RingAllReduce16`` runs it): each
device's part of the batch gradient, its split's gradient g_i times n_i/B, goes into the
ring; the reduce-scatter sends chunks of the parts and partial sums, and each completed
chunk is rounded once more for the all-gather. The rounding statistics
(:func:`fp16_rounding`: the relative error; the nonzero values below float16's smallest
normal number, which keep fewer digits, and those that round to zero) are taken over
every value that was rounded on its way, and over each device's part on its own.

    python -m mgpu_lab.measure.ring16 data/ring16.json    (make ring16)
"""
import datetime
import sys

import numpy as np
from tqdm.auto import tqdm

from ..collectives import ring_chunks, ring_schedule
from ..data import DATA_DIR, load_digits
from ..gradients import split_weights
from ..optim import Momentum
from ..predict import algorithms, costmodel
from ..presets import digits_model
from ..split import split_bounds
from ..trainer import DataParallelTrainer
from .machine import load_data, machine_info, machine_label, save_data

__all__ = ["RUNS", "PATH", "run", "fp16_rounding", "device_parts", "ring16_replay", "save",
           "load"]

PATH = DATA_DIR / "ring16.json"  # where make ring16 writes it, and chapter 10 reads it

# (label, engine, strategy): the reference first
RUNS = (("host, float32 (serial)", "serial", "host"), ("ring, float32", "local", "ring"),
        ("ring16, float16 on the wire", "local", "ring16"))


def _flat(values):
    return np.concatenate([np.ravel(v) for v in values])


def fp16_rounding(grad):
    """Where float16 rounds a float32 gradient ``grad`` (flat): its relative error
    |g16 - g| / |g|, and the shares of nonzero values below float16's smallest normal
    number (fewer significant bits) and of those that become 0."""
    g = np.asarray(grad, np.float32)
    g16 = g.astype(np.float16).astype(np.float32)
    nonzero = g != 0
    tiny = np.finfo(np.float16).tiny  # 2^-14, the smallest normal float16
    return {"relative_error": float(np.linalg.norm(g16 - g) / np.linalg.norm(g)),
            "below_normal": float(np.mean(np.abs(g[nonzero]) < tiny)),
            "to_zero": float(np.mean(g16[nonzero] == 0)),
            "float16_tiny": float(tiny), "float16_max": float(np.finfo(np.float16).max),
            "float16_eps": float(np.finfo(np.float16).eps)}


def device_parts(grad_fn, x, y, n_devices):
    """Each device's part of the batch gradient as it goes into the ring: the gradient of
    its split (``split_bounds``) times n_i/B (``split_weights``), flat float32, one array a
    device. ``grad_fn(x, y)`` gives a split's gradient arrays (``model.gradient_function()``)."""
    bounds = split_bounds(len(x), n_devices)
    weights = split_weights([b - a for a, b in bounds])
    return [_flat(grad_fn(x[a:b], y[a:b])) * w for (a, b), w in zip(bounds, weights)]


def ring16_replay(parts):
    """The 16-bit ring all-reduce of ``parts`` (one flat float32 array a device), replayed:
    ``(rounded, result)``.

    ``rounded``: every float32 value that was rounded to float16 on its way, in order:
    what each reduce-scatter step sends (chunks of the parts, then partial sums), then each
    device's completed chunk, which its owner rounds before the all-gather sends it (the
    all-gather's copies are float16 already and round no further). ``result``: the sum
    every device ends with. Each received chunk is added to the receiver's float32 partial
    sum, as :class:`~mgpu_lab.engines.strategies.RingAllReduce` does with float16 wires.
    """
    bufs = [np.array(p, np.float32).ravel() for p in parts]
    N, P = len(bufs), bufs[0].size
    chunks = [slice(a, b) for a, b in ring_chunks(P, N)]
    rounded = []
    with np.errstate(over="ignore"):  # beyond float16's range: inf, as on the wire
        for op, sends in ring_schedule(N)[:N - 1]:  # the reduce-scatter ("add") steps
            out = [(dst, c, bufs[src][chunks[c]].copy()) for src, dst, c in sends]
            for dst, c, data in out:  # every device sends before any receives
                rounded.append(data)
                bufs[dst][chunks[c]] += data.astype(np.float16).astype(np.float32)
        result = np.empty(P, np.float32)
        for i, buf in enumerate(bufs):  # device i completed chunk (i + 1) mod N
            c = chunks[(i + 1) % N]
            rounded.append(buf[c].copy())
            result[c] = buf[c].astype(np.float16)
    return np.concatenate(rounded), result


def _train(label, engine, strategy, model, batches, n_devices, lr, progress):
    """One run: the start and the params after every step (flat), bytes per step, the
    losses, the final loss and accuracy."""
    x, y = load_digits()
    params, sent, losses = [], [], []
    with DataParallelTrainer(model.spec, n_devices=n_devices, optimizer=Momentum(lr),
                             engine=engine, strategy=strategy) as tr:
        start = _flat(tr.model.get_values())
        for bx, by in tqdm(batches, desc=label, disable=not progress, leave=False):
            losses.append(float(tr.step(bx, by)))
            moved = getattr(tr.engine, "last_bytes", None)
            sent.append([int(m["sent"]) for m in moved] if moved else None)
            params.append(_flat(tr.model.get_values()))
        loss, accuracy = tr.evaluate(x, y)
    return start, params, sent, losses, float(loss), float(accuracy)


def run(steps=20, n_devices=2, batch_size=64, lr=0.05, seed=0, progress=True):
    """The measurement as a JSON-able dict (see the module docstring)."""
    model = digits_model("cnn")
    x, y = load_digits()
    rng = np.random.default_rng(seed)
    batches = [(x[i], y[i]) for i in (rng.choice(len(x), batch_size, replace=False)
                                      for _ in range(steps))]
    # the first step, at the start: each device's part and what the 16-bit ring rounds
    parts = device_parts(model.gradient_function(), *batches[0], n_devices)
    rounded, _ = ring16_replay(parts)
    out = {"kind": "measured", "created": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine_info(), "machine_label": machine_label(),
           "how": "mgpu_lab.measure.ring16.run (make ring16)",
           "settings": {"steps": steps, "n_devices": n_devices, "batch_size": batch_size,
                        "lr": lr, "momentum": Momentum(lr).mu, "seed": seed,
                        "model": "digits_model('cnn')", "n_params": int(model.n_params),
                        "n_eval": len(x)},
           "first_step_wire": {**fp16_rounding(rounded), "n_rounded": int(rounded.size)},
           "first_step_parts": [fp16_rounding(p) for p in parts], "runs": {}}
    ref = start0 = None
    for label, engine, strategy in RUNS:
        start, params, sent, losses, loss, acc = _train(label, engine, strategy, model,
                                                        batches, n_devices, lr, progress)
        if ref is None:
            ref, start0 = params, start
        if not np.array_equal(start, start0):
            raise RuntimeError(f"{label} did not start where the reference did")
        diff = [p - r for p, r in zip(params, ref)]
        wire = "fp16" if strategy == "ring16" else "fp32"
        moved = np.linalg.norm(ref[-1] - start0)  # how far the reference travelled
        out["runs"][strategy] = {
            "label": label, "engine": engine, "sent_bytes_per_step": sent,
            "predicted_sent_bytes": None if engine == "serial" else algorithms.bytes_per_device(
                "ring", costmodel.gradient_bytes(model, wire), n_devices),
            "max_abs_diff": [float(np.abs(d).max()) for d in diff],
            "relative_diff": [float(np.linalg.norm(d) / np.linalg.norm(r))
                              for d, r in zip(diff, ref)],
            # |θ_T − θ_0| / |θ_T| of this run, and its last difference from the reference
            # over the distance the reference moved, |θ_T − θ_ref,T| / |θ_ref,T − θ_0|
            "moved": float(np.linalg.norm(params[-1] - start) / np.linalg.norm(params[-1])),
            "diff_over_moved": float(np.linalg.norm(diff[-1]) / moved),
            "losses": losses, "final_loss": loss, "final_accuracy": acc,
            "final_correct": int(round(acc * len(x)))}
    return out


def save(result, path=PATH):
    """Write ``result`` as JSON, atomically (:func:`~.machine.save_data`)."""
    return save_data(result, path)


def load(path=PATH):
    """The saved measurement (:func:`run`'s dict)."""
    return load_data(path, "make ring16")


if __name__ == "__main__":
    print(save(run(), sys.argv[1] if len(sys.argv) > 1 else PATH))
