"""The 16-bit ring, measured: float16 on the wire against float32, on the pool.

Trains the digits CNN (``presets.digits_model("cnn")``) for ``steps`` steps three times
from the same start and the same batches: the host gather on the serial engine (the
float32 reference: the stacked gradient, no transport), the float32 ring and the
``ring16`` strategy on a :class:`~mgpu_lab.engines.local.DevicePool` of ``n_devices``.
It records each step's bytes per device (``StepResult.bytes``, counted by the pool's
links) beside the model's ``bytes_per_device``, the parameters' difference from the
reference after every step, the final loss and accuracy, and where float16 rounds the
first step's batch gradient (its relative error; the values below float16's smallest
normal number, which keep fewer digits, and those that round to zero).

    python -m mgpu_lab.measure.ring16 data/ring16.json    (make ring16)
"""
import datetime
import json
import sys

import numpy as np
from tqdm.auto import tqdm

from ..data import DATA_DIR, load_digits
from ..optim import Momentum
from ..predict import algorithms, costmodel
from ..presets import digits_model
from ..trainer import DataParallelTrainer
from .machine import machine_info, machine_label

__all__ = ["RUNS", "PATH", "run", "fp16_rounding", "save", "load"]

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


def _train(label, engine, strategy, model, batches, n_devices, lr, progress):
    """One run: params after every step (flat), bytes per step, loss, accuracy."""
    x, y = load_digits()
    params, sent, losses = [], [], []
    with DataParallelTrainer(model.spec, n_devices=n_devices, optimizer=Momentum(lr),
                             engine=engine, strategy=strategy) as tr:
        for bx, by in tqdm(batches, desc=label, disable=not progress, leave=False):
            losses.append(float(tr.step(bx, by)))
            moved = getattr(tr.engine, "last_bytes", None)
            sent.append([int(m["sent"]) for m in moved] if moved else None)
            params.append(_flat(tr.model.get_values()))
        loss, accuracy = tr.evaluate(x, y)
    return params, sent, losses, float(loss), float(accuracy)


def run(steps=20, n_devices=2, batch_size=64, lr=0.05, seed=0, progress=True):
    """The measurement as a JSON-able dict (see the module docstring)."""
    model = digits_model("cnn")
    x, y = load_digits()
    rng = np.random.default_rng(seed)
    batches = [(x[i], y[i]) for i in (rng.choice(len(x), batch_size, replace=False)
                                      for _ in range(steps))]
    grad = model.gradient_function()(*batches[0])  # the first step's batch gradient
    out = {"kind": "measured", "created": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine_info(), "machine_label": machine_label(),
           "how": "mgpu_lab.measure.ring16.run (make ring16)",
           "settings": {"steps": steps, "n_devices": n_devices, "batch_size": batch_size,
                        "lr": lr, "momentum": Momentum(lr).mu, "seed": seed,
                        "model": "digits_model('cnn')", "n_params": int(model.n_params)},
           "first_gradient": fp16_rounding(_flat(grad)), "runs": {}}
    ref = None
    for label, engine, strategy in RUNS:
        params, sent, losses, loss, acc = _train(label, engine, strategy, model, batches,
                                                 n_devices, lr, progress)
        ref = params if ref is None else ref
        diff = [p - r for p, r in zip(params, ref)]
        wire = "fp16" if strategy == "ring16" else "fp32"
        out["runs"][strategy] = {
            "label": label, "engine": engine, "sent_bytes_per_step": sent,
            "predicted_sent_bytes": None if engine == "serial" else algorithms.bytes_per_device(
                "ring", costmodel.gradient_bytes(model, wire), n_devices),
            "max_abs_diff": [float(np.abs(d).max()) for d in diff],
            "relative_diff": [float(np.linalg.norm(d) / np.linalg.norm(r))
                              for d, r in zip(diff, ref)],
            "losses": losses, "final_loss": loss, "final_accuracy": acc}
    return out


def save(result, path=PATH):
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return path


def load(path=PATH):
    """The saved measurement (:func:`run`'s dict)."""
    with open(path) as f:
        return json.load(f)


if __name__ == "__main__":
    print(save(run(), sys.argv[1] if len(sys.argv) > 1 else PATH))
