"""Chapter 13's figures: the critical sweep (measured), the three limits on the split and
time to target against N (predicted), and time to target on this machine (both).

Each figure says what is predicted (by :mod:`mgpu_lab.predict.time_to_accuracy`: the
workload's trade-off, measured or assumed, times the cost model's step) and what is
measured (and on which machine).
"""
import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from .plots import NOISE_SCALE_METHOD, _finish

__all__ = ["LIMIT_STYLES", "three_limits", "time_and_cost", "sweep", "learning_rates",
           "noise_run"]

# (label, colour) of each limit, as the explorer draws them
LIMIT_STYLES = {"memory": ("memory: b_mem", "tab:brown"),
                "communication": ("communication: b*", "tab:orange"),
                "statistics": ("statistics: B_crit / N", "tab:red")}


def _plain_log(ax, batches=None):
    """Log axes ticked at 1, 2, 5 x 10^k on y and at ``batches`` (or powers of four) on x,
    labelled as plain numbers (200, not 2 x 10^2; 64, not 2^6)."""
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if batches:
        ticks = [b for b in batches if math.log2(b) % 2 == 1] or list(batches)
        ax.set_xticks(ticks, [f"{b:,}" for b in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _log2_axis(ax, ns):
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())


def three_limits(panels, source, title="Three limits on the samples per GPU (predicted)"):
    """One panel per entry of ``panels`` ({title: rows, one per N, with ``n_gpus``,
    ``memory``, ``communication``, ``statistics`` and ``b``, the split chosen, as
    :func:`~mgpu_lab.figures.tta_explorer.grid_rows` gives them}): the memory limit, b*
    and B_crit / N against N, and the split with the shortest time, in samples per GPU.
    Shaded: the splits that fit and are neither communication-bound nor past the
    statistical limit."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 0.6, 3.9),
                             sharey=True, squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels.items()):
        ns = [r["n_gpus"] for r in rows]
        for key, (label, colour) in LIMIT_STYLES.items():
            pts = [(r["n_gpus"], r[key]) for r in rows if r[key] > 0]
            ax.plot(*zip(*pts), color=colour, lw=2, label=label)
        ax.plot(ns, [r["b"] for r in rows], "o", ms=4, color="tab:blue",
                label="split with the shortest time")
        lo = [max(r["communication"], 1) for r in rows]
        hi = [min(r["memory"], r["statistics"]) for r in rows]
        ax.fill_between(ns, lo, hi, where=[a < b for a, b in zip(lo, hi)], color="tab:green",
                        alpha=0.12, lw=0)
        ax.set(title=name, xlabel="number of GPUs N", yscale="log")
        _log2_axis(ax, [n for n in ns if n in (1, 4, 16, 64, 256, 1024)])
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("samples per GPU")
    axes[0][0].legend(frameon=False, fontsize=7, loc="lower left")
    fig.suptitle(title)
    return _finish(fig, axes[0][0], source)


def time_and_cost(curves, source, title="Time to target and what it costs (predicted)",
                  unit=3600, unit_name="hours"):
    """Two panels against N: time to target, and GPU time (N x time, what the run costs);
    ``curves``: {label: rows with ``n_gpus`` and ``seconds``}, one line each, shown in
    ``unit`` seconds."""
    fig, (ax_t, ax_c) = plt.subplots(1, 2, figsize=(9.6, 3.9))
    for label, rows in curves.items():
        ns = [r["n_gpus"] for r in rows]
        line, = ax_t.plot(ns, [r["seconds"] / unit for r in rows], "o-", ms=3, label=label)
        ax_c.plot(ns, [n * r["seconds"] / unit for n, r in zip(ns, rows)], "o-", ms=3,
                  color=line.get_color())
    for ax, what in ((ax_t, f"time to target ({unit_name})"),
                     (ax_c, f"GPU time: N x time ({unit_name})")):
        ax.set(xlabel="number of GPUs N", ylabel=what, yscale="log")
        ns = sorted({r["n_gpus"] for rows in curves.values() for r in rows})
        _log2_axis(ax, [n for n in ns if n in (1, 4, 16, 64, 256, 1024)])
        ax.grid(alpha=0.3, which="both")
    ax_t.set_title("time to the target")
    ax_c.set_title("what it costs")
    ax_t.legend(frameon=False, fontsize=7)
    fig.suptitle(title)
    return _finish(fig, ax_t, source)


# -- the critical sweep (mgpu_lab.measure.critical_sweep) ---------------------------------
def _sweep_source(result):
    t, m = result["target"], result["model"]
    return (f"{result['machine_label']}; {result['created']}\n{m['describe']} on the "
            f"digits, {result['n_devices']} devices ({result['engine']} engine), plain SGD, "
            f"seeds {', '.join(map(str, result['seeds']))}; target: {t['metric']} <= {t['value']}"
            f" (mgpu_lab.measure.critical_sweep); fit: mgpu_lab.predict.batch_scaling")


def sweep(result):
    """The critical sweep: steps S and samples E to the target against the batch B (its
    tuned learning rate each), the fitted trade-off through them, B_crit, and B_simple of
    the runs at the largest batch (the sweep's estimate of B_noise)."""
    from ..predict.batch_scaling import TradeOff, samples_to_target, steps_to_target
    rows = [r for r in result["rows"] if r["steps"] is not None]
    fit = TradeOff(**{k: result["fit"][k] for k in TradeOff._fields})
    b = np.geomspace(min(r["batch"] for r in rows), max(r["batch"] for r in rows), 200)
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(9.6, 3.9))
    for ax, key, curve, what in ((ax_s, "steps", steps_to_target(b, fit), "steps S"),
                                 (ax_e, "samples", samples_to_target(b, fit), "samples E = B S")):
        ax.plot([r["batch"] for r in rows], [r[key] for r in rows], "o", color="tab:blue",
                label="measured (tuned learning rate)")
        ax.plot(b, curve, "-", color="0.3", lw=1.2,
                label="fit: S_min (1 + B_crit / B)" if key == "steps" else "fit: E_min (1 + B / B_crit)")
        ax.axvline(fit.b_crit, color="tab:red", ls="--", lw=1.2, label=f"B_crit = {fit.b_crit:.0f}")
        if result.get("b_noise"):
            ax.axvline(result["b_noise"], color="tab:green", ls=":", lw=1.5,
                       label=f"B_simple = {result['b_noise']:.0f} (estimates B_noise)")
        ax.set(xscale="log", yscale="log", xlabel="batch B (samples)",
               ylabel=f"{what} to the target" + (" (samples)" if key == "samples" else ""))
        ax.set_xscale("log", base=2)
        _plain_log(ax, result["batch_sizes"])
        ax.grid(alpha=0.3, which="both")
    ax_s.set_title("steps to the target")
    ax_e.set_title("samples to the target")
    ax_s.legend(frameon=False, fontsize=7)
    fig.suptitle("The critical batch, measured: McCandlish et al.'s trade-off on the digits")
    return _finish(fig, ax_s, _sweep_source(result))


def learning_rates(result):
    """The learning rate tuned at each batch against Goyal et al.'s linear scaling rule
    (lr(B0) B / B0 after a warm-up), and the steps the rule's runs took (or that they did
    not reach the target)."""
    rows = result["rows"]
    rule = result["linear_rule"]
    fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(9.6, 3.9))
    tuned = [r for r in rows if r["lr"] is not None]
    ax_l.plot([r["batch"] for r in tuned], [r["lr"] for r in tuned], "o-", color="tab:blue",
              label="tuned on the grid (fewest steps)")
    ax_l.plot([r["batch"] for r in rows], [r["lr_linear_rule"] for r in rows], "--",
              color="tab:orange", label=f"linear rule from B0 = {rule['anchor_batch']}")
    grid = result["lr_grid"]
    ax_l.axhspan(min(grid), max(grid), color="0.9", zorder=0, label="the grid tried")
    ax_l.set(xlabel="batch B (samples)", ylabel="learning rate (dimensionless)", yscale="log",
             title="learning rate")
    ok = [r for r in rows if r["steps_linear_rule"] is not None]
    ax_s.plot([r["batch"] for r in tuned], [r["steps"] for r in tuned], "o-", color="tab:blue",
              label="tuned rate")
    ax_s.plot([r["batch"] for r in ok], [r["steps_linear_rule"] for r in ok], "s--",
              color="tab:orange", label=f"linear rule, warm-up {rule['warmup_steps']} steps")
    failed = [r for r in rows if r["steps_linear_rule"] is None]
    for r in failed:
        ax_s.axvline(r["batch"], color="tab:orange", alpha=0.25, lw=6)
    if failed:
        ax_s.plot([], [], color="tab:orange", alpha=0.25, lw=6,
                  label="linear rule: target not reached")
    ax_s.set(xlabel="batch B (samples)", ylabel="steps S to the target", yscale="log",
             title="steps to the target")
    for ax in (ax_l, ax_s):
        ax.set_xscale("log", base=2)
        _plain_log(ax, result["batch_sizes"])
        ax.grid(alpha=0.3, which="both")
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle("Tuned learning rates against Goyal et al.'s linear scaling rule")
    return _finish(fig, ax_l, _sweep_source(result))


# -- the noise scale over one run (the trainer's history) ----------------------------------
def noise_run(history, windows=(), spike=None, source=None,
              title="Gradient noise scale and the loss during one run (measured)"):
    """Three panels against the step, from ``trainer.history`` of a run on N >= 2 devices:
    the training loss of each step's batch, B_simple = tr(Σ)/|G|² (the trainer's moving
    averages), and the two averaged estimators apart. ``windows``: (first, last) step
    ranges the text averages over, shaded; ``spike``: (first, last) steps of a loss spike,
    shaded red. ``source``: the provenance line (default: this machine)."""
    from ..measure.machine import machine_label
    rows = [h for h in history if h.get("b_simple") is not None]
    if not rows:
        raise ValueError("the history holds no noise scale: train on 2 or more devices "
                         "(one device has no second batch size)")
    steps = [h["step"] for h in history]
    fig, (ax_l, ax_b, ax_e) = plt.subplots(1, 3, figsize=(11.4, 3.8))
    ax_l.plot(steps, [h["loss"] for h in history], color="0.3", lw=1)
    ax_l.set(title="training loss (each step's batch)", ylabel="cross-entropy (nats)",
             yscale="log")
    s = [h["step"] for h in rows]
    ax_b.plot(s, [h["b_simple"] for h in rows], color="tab:blue", lw=1.6)
    ax_b.set(title="B_simple = tr(Σ) / |G|²", ylabel="noise scale (samples per batch)")
    ax_b.set_ylim(bottom=0)
    ax_e.plot(s, [h["trace_sigma"] for h in rows], color="tab:blue", lw=1.6, label="tr(Σ)")
    ax_e.plot(s, [h["grad_sq"] for h in rows], color="tab:blue", lw=1.6, ls="--", label="|G|²")
    ax_e.set(title="the two estimators (moving averages)", yscale="log",
             ylabel="squared gradient norm (nats²)")
    ax_e.legend(frameon=False, fontsize=7)
    for ax in (ax_l, ax_b, ax_e):
        for k, (a, b) in enumerate(windows):
            ax.axvspan(a, b, color="tab:green", alpha=0.12, lw=0,
                       label="windows averaged in the text" if k == 0 and ax is ax_b else None)
        if spike is not None:
            ax.axvspan(spike[0], spike[1], color="tab:red", alpha=0.15, lw=0,
                       label="loss spike" if ax is ax_b else None)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    if windows or spike is not None:
        ax_b.legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=10)
    _finish(fig, ax_l, source or f"{machine_label()}; {NOISE_SCALE_METHOD}")
    fig.subplots_adjust(top=0.84)
    return fig
