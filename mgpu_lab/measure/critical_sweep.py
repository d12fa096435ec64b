"""The critical batch, measured: steps to a fixed target at every batch size, on the digits.

    run(...)            the sweep: for each batch B, SGD's learning rate tuned on a grid,
                        the steps S (and samples E = B S) to the target, the gradient noise
                        scale B_simple measured during those runs, and Goyal et al.'s
                        linear scaling rule run beside; the trade-off fitted (predict/
                        batch_scaling.py: B_crit = E_min / S_min). Returns data.
    save(result), load()   data/critical_batch.json (provenance: machine, date, hash)
    format_table(result)   the rows as text within 88 columns

What is trained, and why (the defaults, :data:`DEFAULTS`):

- the digits MLP (64-64-10, 4,810 parameters; ``presets.digits_model("mlp")``): a step
  costs about a millisecond, so some 260 runs to a target fit in a few minutes on
  two cores; the CNN costs several times more per sample and teaches nothing more here.
- 2 devices of a :class:`~mgpu_lab.engines.serial.SerialEngine` (host gather, in this
  process, no worker processes): every step reports each device's |g_i|^2 and the
  batch's |g|^2, the two batch sizes B/2 and B that the noise scale needs
  (:func:`mgpu_lab.statistics.gradient_noise_scale`).
- plain SGD, no momentum: McCandlish et al.'s model of the trade-off (and of the best
  step, which grows like B only while B is small against the noise scale) is a model of
  plain SGD, and with no momentum the learning rate is the whole step.
- the target: the validation loss (cross-entropy on the held-out fifth of the digits,
  ``train_test_split(seed=0)``) at or below 0.15, checked after every step; S is the first
  step that reaches it. The MLP's best validation loss is about 0.09 (it overfits after
  that), and every batch from 2 to 1024 reaches 0.15 within the budget of 2,000 steps.
- B = 2, 4, ..., 1024: 2 is the smallest batch two devices can split, 1024 the largest
  power of two within the 1,438 training images (each epoch is a fresh permutation, so
  a batch never repeats a sample). Batches 2 and 4 are there because, at this target,
  the steps stop halving near B = 16: the fit needs points on both sides of the bend.
- the learning rate: a factor-sqrt(2) grid; for each B the rate with the fewest steps,
  averaged over the seeds (each seed: its own initial weights and batch order). A run
  stops once its steps can no longer beat the best rate so far (the cut is exact: it
  never changes which rate wins) or when it diverges (a non-finite loss, or a validation
  loss over 10 times the initial one).
- Goyal et al.'s rule: lr(B) = lr(B0) B / B0 from the tuned rate at the smallest batch
  B0, reached by a linear warm-up (``optim.linear_scaling_warmup``) over 10 steps (they
  warm up over 5 epochs of 90; here the fastest run takes some 60 steps), run at every
  B with the same seeds, target and budget.
"""
import math
import os
import textwrap
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import DATA_DIR, load_digits, train_test_split
from ..engines.serial import SerialEngine
from ..engines.update import Update
from ..errors import NonFiniteGradient
from ..optim import SGD, linear_scaling_warmup
from ..predict.batch_scaling import fit_tradeoff, steps_to_target
from ..presets import digits_model
from ..sources import library_hash
from ..statistics import NoiseScaleEMA, gradient_noise_scale
from ..trainer import batch_indices
from .machine import load_data, machine_info, machine_label, save_data

__all__ = ["DEFAULTS", "DATA_FILE", "run", "save", "load", "format_table", "COMMAND"]

DATA_FILE = DATA_DIR / "critical_batch.json"
COMMAND = "python -m mgpu_lab critical-sweep"  # what rewrites DATA_FILE (make critical)
DEFAULTS = {
    "model": "mlp", "n_devices": 2, "target": 0.15, "budget": 2000, "seeds": (0, 1),
    "batch_sizes": tuple(2 ** k for k in range(1, 11)),  # 2 .. 1024
    "lr_grid": tuple(round(0.05 * 2 ** (k / 2), 4) for k in range(12)),  # 0.05 .. 2.26
    "warmup_steps": 10, "noise_beta": 0.95,
}
DIVERGED = 10.0  # a validation loss this many times the initial one: the run diverged


class _Runner:
    """One compiled model and engine for every run (Theano compiles each graph once):
    ``train(batch, lr, seed, cap)`` runs SGD from seed ``seed``'s initial weights."""

    def __init__(self, model_name, n_devices, seeds, target, data):
        self.target = target
        (self.x, self.y), (self.xv, self.yv) = data
        self.model = digits_model(model_name, seed=0)
        self.engine = SerialEngine(self.model, n_devices)
        self.evaluate = self.model.loss_and_accuracy_function()
        self.inits = {s: digits_model(model_name, seed=s).get_values() for s in seeds}
        self.initial_loss = {s: self._val_loss(self.inits[s]) for s in seeds}

    def _val_loss(self, values):
        self.model.set_values(values)
        return float(self.evaluate(self.xv, self.yv)[0])

    def train(self, batch, lr, seed, cap, budget, noise_beta=0.95):
        """Steps until the validation loss reaches the target, at most ``cap``.

        ``lr``: a number or a schedule (step -> rate). Returns a run record: ``steps``
        (None unless reached), ``outcome`` ("reached"; "diverged"; "budget": not reached
        in ``budget`` steps; "cut": stopped at ``cap`` < budget, it could no longer beat
        the best rate) and the noise scale over the run's steps (:func:`_noise_summary`)."""
        values, opt = self.inits[seed], SGD(lr)
        state, ema, sums = opt.init_state(values), NoiseScaleEMA(noise_beta), np.zeros(3)
        limit, steps = DIVERGED * self.initial_loss[seed], None
        outcome = "budget" if cap >= budget else "cut"
        for t in range(cap):
            idx = batch_indices(t, len(self.x), batch, seed)
            try:
                r = self.engine.step(values, self.x[idx], self.y[idx],
                                     Update(opt, state, t, f"B={batch} step {t}"))
            except NonFiniteGradient:
                outcome = "diverged"
                break
            values, state = r.new_values, r.new_state
            est = gradient_noise_scale(r.split_sizes, r.split_sq_norms, r.batch_sq_norm)
            sums += (est.trace_sigma, est.grad_sq, 1)
            ema.update(r.split_sizes, r.split_sq_norms, r.batch_sq_norm)
            loss = self._val_loss(values)
            if not loss <= limit:  # NaN too
                outcome = "diverged"
                break
            if loss <= self.target:
                outcome, steps = "reached", t + 1
                break
        return {"steps": steps, "outcome": outcome, **_noise_summary(sums, ema)}


def _noise_summary(sums, ema):
    """The run's noise scale: ``trace_sigma`` and ``grad_sq``, the unbiased estimators
    averaged over its steps, ``b_simple`` their ratio (the average of ratios would be
    biased); ``b_simple_end`` the moving-average estimate at its last step."""
    n = sums[2]
    if not n:
        return {"trace_sigma": None, "grad_sq": None, "b_simple": None, "b_simple_end": None}
    trace_sigma, grad_sq = sums[0] / n, sums[1] / n
    end = ema.value.b_simple
    return {"trace_sigma": trace_sigma, "grad_sq": grad_sq,
            "b_simple": trace_sigma / grad_sq if grad_sq > 0 else None,
            "b_simple_end": end if math.isfinite(end) else None}


def _tune(runner, batch, cfg, bar):
    """Every rate of the grid at ``batch``, largest first, each on every seed: the runs
    and the best rate (fewest steps summed over the seeds; None if none reached).

    A run is cut once its steps plus those of the seeds before it reach the best total
    so far: it can no longer win, so the cut never changes the answer."""
    seeds, runs, best, best_total = cfg["seeds"], [], None, None
    for lr in sorted(cfg["lr_grid"], reverse=True):
        total = 0
        for k, seed in enumerate(seeds):
            cap = cfg["budget"] if best_total is None else min(cfg["budget"], best_total - total)
            rec = runner.train(batch, lr, seed, cap, cfg["budget"], cfg["noise_beta"])
            runs.append({"batch": batch, "lr": lr, "seed": seed, **rec})
            bar.update(1)
            if rec["steps"] is None:
                bar.update(len(seeds) - k - 1)  # the other seeds of this rate: skipped
                break
            total += rec["steps"]
        else:
            if best_total is None or total < best_total:
                best, best_total = lr, total
        bar.set_postfix(B=batch, lr=lr, best=best)
    return runs, best


def _linear_rule(runner, batch, anchor, cfg, bar):
    """Goyal et al.'s rule at ``batch``: lr(B0) B / B0 after a linear warm-up of
    ``warmup_steps``, from ``anchor`` = (B0, lr(B0)); one run per seed, no cut."""
    b0, lr0 = anchor
    runs = []
    for seed in cfg["seeds"]:
        schedule = linear_scaling_warmup(lr0, b0, batch, cfg["warmup_steps"])
        rec = runner.train(batch, schedule, seed, cfg["budget"], cfg["budget"],
                           cfg["noise_beta"])
        runs.append({"batch": batch, "lr": lr0 * batch / b0, "seed": seed, **rec})
        bar.update(1)
    return runs


def _row(batch, lr, runs, rule_runs):
    """One batch's summary: the tuned rate's steps and noise scale (means over the seeds)
    beside the linear rule's."""
    mine = [r for r in runs if r["lr"] == lr]
    steps = [r["steps"] for r in mine] if lr is not None else None
    reached = [r["steps"] for r in rule_runs if r["steps"] is not None]
    noise = [r["b_simple"] for r in mine if r["b_simple"] is not None]
    return {"batch": batch, "lr": lr, "steps": float(np.mean(steps)) if steps else None,
            "steps_by_seed": steps, "samples": float(batch * np.mean(steps)) if steps else None,
            "b_simple": float(np.mean(noise)) if noise else None,
            "lr_linear_rule": rule_runs[0]["lr"] if rule_runs else None,
            "steps_linear_rule": (float(np.mean(reached)) if len(reached) == len(rule_runs)
                                  and reached else None),
            "linear_rule_outcomes": [r["outcome"] for r in rule_runs],
            "steps_fit": None}  # the fitted S(B), filled in by _fit


def _settings(settings):
    """DEFAULTS updated by ``settings``, checked: a clear error for a bad one."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **settings}
    cfg["batch_sizes"] = sorted(int(b) for b in cfg["batch_sizes"])
    cfg["lr_grid"], cfg["seeds"] = [float(v) for v in cfg["lr_grid"]], list(cfg["seeds"])
    if not cfg["batch_sizes"] or cfg["batch_sizes"][0] < cfg["n_devices"]:
        raise ValueError(f"every batch needs at least one sample per device: batch sizes "
                         f"{cfg['batch_sizes']} with {cfg['n_devices']} devices")
    if cfg["n_devices"] < 2:
        raise ValueError("the noise scale needs two batch sizes, B/N and B: use n_devices >= 2")
    if not cfg["lr_grid"] or min(cfg["lr_grid"]) <= 0 or not cfg["seeds"]:
        raise ValueError(f"need positive learning rates and at least one seed, got "
                         f"lr_grid={cfg['lr_grid']}, seeds={cfg['seeds']}")
    if not cfg["target"] > 0 or cfg["budget"] < 1:
        raise ValueError(f"target must be a validation loss > 0 and budget >= 1 step, got "
                         f"{cfg['target']} and {cfg['budget']}")
    return cfg


def run(progress=True, **settings):
    """The sweep (module docstring) with :data:`DEFAULTS` updated by ``settings``;
    returns the result as a JSON-able dict (keys: data/README.md)."""
    cfg, t0, load = _settings(settings), time.perf_counter(), os.getloadavg()
    x, y = load_digits(flat=cfg["model"] != "cnn")
    data = train_test_split(x, y, seed=0)  # (train, validation): 1,438 and 359 images
    if cfg["batch_sizes"][-1] > len(data[0][0]):
        raise ValueError(f"batch {cfg['batch_sizes'][-1]} is larger than the "
                         f"{len(data[0][0])} training images")
    runner = _Runner(cfg["model"], cfg["n_devices"], cfg["seeds"], cfg["target"], data)
    per_batch = (len(cfg["lr_grid"]) + 1) * len(cfg["seeds"])
    bar = tqdm(total=len(cfg["batch_sizes"]) * per_batch, desc="critical sweep", unit="run",
               disable=not progress)
    with bar:
        tuned = {b: _tune(runner, b, cfg, bar) for b in cfg["batch_sizes"]}
        anchor = next(((b, lr) for b, (_, lr) in tuned.items() if lr is not None), None)
        if anchor is None:
            raise RuntimeError(f"no batch reached the target {cfg['target']} within "
                               f"{cfg['budget']} steps at any rate of the grid")
        rule = {b: _linear_rule(runner, b, anchor, cfg, bar) for b in cfg["batch_sizes"]}
    rows = [_row(b, lr, runs, rule[b]) for b, (runs, lr) in tuned.items()]
    runs = ([dict(r, rule="grid") for b in tuned for r in tuned[b][0]]
            + [dict(r, rule="linear") for b in rule for r in rule[b]])
    result = _result(cfg, runner, rows, runs, anchor, time.perf_counter() - t0)
    result["load_average"] = [round(v, 2) for v in load]  # other work sharing the cores
    return result


def _fit(rows):
    """The trade-off fitted to the rows that reached the target; ``{"error": why}`` where
    it cannot be (fewer than 3 rows, no trade-off in them): the runs are kept either way."""
    done = [r for r in rows if r["steps"] is not None]
    try:
        fit = fit_tradeoff([r["batch"] for r in done], [r["steps"] for r in done])
    except ValueError as e:
        return {"error": str(e)}
    for r in rows:
        r["steps_fit"] = steps_to_target(r["batch"], fit)
    return {**fit._asdict(), "method": "fit_tradeoff: S = S_min + E_min / B, linear least "
            "squares with residuals relative to S (mgpu_lab.predict.batch_scaling)"}


def _b_noise(rows):
    """``(B_noise, the batch it came from)``: B_simple of the tuned runs at the largest
    batch that reached the target. Why that batch: if each stretch of training needs
    dS_min (1 + B_noise / B) steps, then S_min is the steps of a very large batch and
    B_crit = E_min / S_min is B_noise averaged over such a batch's steps."""
    done = [r for r in rows if r["b_simple"] is not None and r["steps"] is not None]
    return (done[-1]["b_simple"], done[-1]["batch"]) if done else (None, None)


def _code_hash():
    """mgpu_lab.sources.library_hash over the Python sources only: the data files include
    the file this result is written to."""
    return library_hash(data_dir=Path(__file__).resolve().parent / "no-data-dir")


def _result(cfg, runner, rows, runs, anchor, seconds):
    model = runner.model
    return {
        "kind": "measured", "created": datetime.now().isoformat(timespec="seconds"),
        "command": COMMAND, "seconds": round(seconds, 1), "machine": machine_info(),
        "machine_label": machine_label(), "library_hash": _code_hash(),
        "model": {"name": cfg["model"], "describe": model.spec.describe(),
                  "n_params": model.n_params},
        "data": {"name": "digits", "n_train": len(runner.x), "n_validation": len(runner.xv),
                 "split": "train_test_split(test_fraction=0.2, seed=0)"},
        "n_devices": cfg["n_devices"], "engine": "serial", "strategy": "host",
        "optimizer": "sgd",
        "target": {"metric": "validation loss", "value": cfg["target"]},
        "budget": cfg["budget"], "seeds": cfg["seeds"], "batch_sizes": cfg["batch_sizes"],
        "lr_grid": cfg["lr_grid"], "noise_beta": cfg["noise_beta"],
        "linear_rule": {"anchor_batch": anchor[0], "anchor_lr": anchor[1],
                        "warmup_steps": cfg["warmup_steps"]},
        "fit": _fit(rows), **dict(zip(("b_noise", "b_noise_batch"), _b_noise(rows))),
        "rows": rows, "runs": runs,
    }


def save(result, path=DATA_FILE):
    """Write ``result`` as JSON, atomically (:func:`~.machine.save_data`)."""
    return save_data(result, path)


def load(path=DATA_FILE):
    """The saved sweep (:func:`run`'s dict)."""
    return load_data(path, f"make critical ({COMMAND})")


def format_table(result):
    """The rows as text (within 88 columns), then the fit and the noise scale."""
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"{'B':>5} {'lr':>6} {'steps S':>8} {'samples E':>10} {'S fit':>7} "
             f"{'B_simple':>9} {'lr linear':>9} {'S linear':>9}  linear rule"]
    for r in result["rows"]:
        lines.append(f"{r['batch']:>5} {fmt(r['lr'], '.3g'):>6} {fmt(r['steps'], '.1f'):>8} "
                     f"{fmt(r['samples'], '.0f'):>10} {fmt(r.get('steps_fit'), '.1f'):>7} "
                     f"{fmt(r['b_simple'], '.1f'):>9} {fmt(r['lr_linear_rule'], '.3g'):>9} "
                     f"{fmt(r['steps_linear_rule'], '.1f'):>9}  "
                     f"{','.join(sorted(set(r['linear_rule_outcomes'])))}")
    fit, t = result["fit"], result["target"]
    if "b_crit" in fit:
        lines.append(f"fit: S_min = {fit['s_min']:.1f} steps, E_min = {fit['e_min']:.0f} "
                     f"samples, B_crit = E_min / S_min = {fit['b_crit']:.1f}")
    else:
        lines += textwrap.wrap(f"no fit: {fit['error']}", 88)
    lines += [*textwrap.wrap(f"B_simple of the tuned runs at B = {result['b_noise_batch']} "
                             f"(the estimate of B_noise): {fmt(result['b_noise'], '.1f')}; "
                             f"target: {t['metric']} <= {t['value']}", 88),
              *textwrap.wrap(f"{result['machine_label']}; {result['created']}", 88)]
    return "\n".join(lines)
