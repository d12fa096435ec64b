"""Matplotlib figures for the book. Every figure has a title, axis labels with units, and
says whether it is *measured* (on which machine) or *predicted* (by which model)."""
import textwrap

import matplotlib

matplotlib.use(matplotlib.get_backend() if "inline" in matplotlib.get_backend() else "Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..engines.base import Timings  # noqa: E402
from ..measure.machine import machine_label  # noqa: E402
from ..predict.memory import TERMS  # noqa: E402

__all__ = ["provenance", "loss_curves"]


def provenance(ax, text, below=38):
    """Write where a figure's numbers came from under its axes (measured or predicted),
    ``below`` points under the axes' bottom edge (room for tick labels and an x label)."""
    ax.annotate(text, xy=(0, 0), xycoords="axes fraction", xytext=(0, -below),
                textcoords="offset points", fontsize=7, color="0.35", va="top")


# The catalogue's short names whose part is ambiguous on a figure: "A100" is the 40 GB one.
_GPU_LABELS = {"A100": "A100 40GB"}


def _gpu_label(name):
    return _GPU_LABELS.get(name, name)


def loss_curves(histories, title="Training loss on 1..N devices", source="measured"):
    """Loss vs step, one line per run. ``histories``: {label: trainer.history}."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, hist in histories.items():
        ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], label=label, lw=1.6)
    ax.set(title=title, xlabel="training step", ylabel="mean cross-entropy loss (nats)")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    provenance(ax, source)
    fig.tight_layout()
    return fig


# -- throughput: measured (mgpu_lab.measure.bench) and predicted (mgpu_lab.predict.costmodel) ------------
__all__ += ["throughput", "speedup", "predicted_speedup", "step_breakdown"]

_PHASE_COLOURS = {"compute": "tab:blue", "split": "tab:gray", "scatter": "tab:olive",
                  "set_params": "tab:green", "fetch": "tab:orange", "sync": "tab:red",
                  "exchange": "tab:pink", "stack": "tab:purple", "update": "tab:brown",
                  "comm": "tab:orange"}


def _bench_source(result):
    """Provenance of a benchmark result: machine, model, how it was timed."""
    s = result["settings"]
    return (f"{machine_label(result['machine'])}; {result['created']}\n{result['model']['spec']}; "
            f"median of {s['repeats']} runs x {s['steps']} steps after {s['warmup']} warm-up "
            f"(mgpu_lab.measure.bench); shaded: more devices than cores")


def _finish(fig, ax, source, below=38):
    """Provenance under the axes, wrapped, with room kept for it below the x label
    (``below``: points from the axes' bottom edge to the provenance, :func:`provenance`)."""
    lines = [w for line in source.split("\n") for w in textwrap.wrap(line, 115)]
    fig.tight_layout()  # before the provenance exists, so it does not squeeze the axes
    provenance(ax, "\n".join(lines), below)
    room = (below + 9 * len(lines)) / 72 / fig.get_figheight()  # points -> figure fraction
    fig.subplots_adjust(bottom=min(0.6, fig.subplotpars.bottom + room - 0.1))
    return fig


def _by_batch(result):
    """{batch size: rows sorted by N}."""
    out = {}
    for r in sorted(result["rows"], key=lambda r: (r["batch_size"], r["n_devices"])):
        out.setdefault(r["batch_size"], []).append(r)
    return out


def _shade_oversubscribed(ax, result):
    cores, top = result["rows"][0]["cores"], max(r["n_devices"] for r in result["rows"])
    if top > cores:
        ax.axvspan(cores + 0.5, top + 0.5, color="0.9", zorder=0)


def throughput(result, title="Measured throughput on 1..N local devices"):
    """Images/s vs N per batch size (bars: min-max over runs), with the ideal N x (N=1)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for b, rows in _by_batch(result).items():
        n = [r["n_devices"] for r in rows]
        med = [r["images_per_s"] for r in rows]
        err = [[m - r["images_per_s_min"] for m, r in zip(med, rows)],
               [r["images_per_s_max"] - m for m, r in zip(med, rows)]]
        line = ax.errorbar(n, med, yerr=err, marker="o", capsize=3, label=f"batch {b}")
        if rows[0]["n_devices"] == 1:
            ax.plot(n, [med[0] * k for k in n], ls=":", color=line[0].get_color(), lw=1)
    ax.plot([], [], ls=":", color="0.3", label="ideal: N x one device")
    _shade_oversubscribed(ax, result)
    ax.set(title=title, xlabel="devices N (CPU processes, one core each)",
           ylabel="throughput (images/s)")
    ax.set_xticks(sorted({r["n_devices"] for r in result["rows"]}))
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, ax, _bench_source(result))


def speedup(result, title="Measured speed-up on 1..N local devices"):
    """Speed-up over one device vs N per batch size, the ideal line, and (dotted) the cost
    model's prediction from this machine's measured FLOP/s and copy bandwidth."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ns = sorted({r["n_devices"] for r in result["rows"]})
    ax.plot(ns, ns, color="0.3", lw=1, label="ideal (speed-up = N)")
    for b, rows in _by_batch(result).items():
        rows = [r for r in rows if "speedup" in r]
        line, = ax.plot([r["n_devices"] for r in rows], [r["speedup"] for r in rows],
                        marker="o", label=f"measured, batch {b}")
        ax.plot([r["n_devices"] for r in rows], [r["predicted_speedup"] for r in rows],
                ls=":", marker="x", color=line.get_color(), label=f"predicted, batch {b}")
    _shade_oversubscribed(ax, result)
    ax.set(title=title, xlabel="devices N (CPU processes, one core each)",
           ylabel="speed-up over 1 device (x)")
    ax.set_xticks(ns)
    ax.legend(frameon=False, fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    c = result.get("machine_constants")
    note = (f"\npredicted: mgpu_lab.predict.costmodel with measured {c['flops_per_s'] / 1e9:.1f} GFLOP/s "
            f"per core, {c['copy_bw'] / 1e9:.1f} GB/s copy, compute x ceil(N / cores)") if c else ""
    return _finish(fig, ax, _bench_source(result) + note)


def predicted_speedup(predictions, title=None):
    """Predicted speed-up vs N, one colour per GPU kind; solid host gather, dashed ring.

    ``predictions``: :class:`mgpu_lab.predict.costmodel.Prediction` objects (``costmodel.scaling``)
    of one model and batch size. Predicted, not measured: the provenance line says from what.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    groups = {}
    for p in predictions:
        groups.setdefault((p.gpu, p.strategy), []).append(p)
    colours = {}
    for (gpu, strategy), ps in groups.items():
        ps = sorted(ps, key=lambda p: p.n_gpus)
        colour = colours.setdefault(gpu, f"C{len(colours)}")
        mark = "" if ps[0].calibrated else " (uncalibrated)"
        ax.plot([p.n_gpus for p in ps], [p.speedup for p in ps], color=colour, marker="o", ms=3,
                ls="-" if strategy == "host" else "--", label=f"{gpu}, {strategy}{mark}")
    ns = sorted({p.n_gpus for p in predictions})
    ax.plot(ns, ns, color="0.3", lw=1, ls=":", label="ideal (speed-up = N)")
    p0 = predictions[0]
    ax.set(title=title or f"Predicted speed-up, global batch {p0.batch_size}",
           xlabel="GPUs N", ylabel="speed-up over 1 GPU (x)")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _finish(fig, ax, "predicted, not measured: mgpu_lab.predict.costmodel (FLOPs counted on the model's "
               "graph; peak FLOP/s and link bandwidths\nfrom mgpu_lab.predict.gpus with their sources; "
               f"compute efficiency {_efficiency_text(predictions)}); solid: host gather, dashed: ring")


def _efficiency_text(predictions):
    """Each GPU's efficiency, said to be calibrated or uncalibrated (assumed): one entry per
    GPU and precision, e.g. 'V100 37% of peak (calibrated), H100 11% of peak (uncalibrated,
    assumed)'."""
    seen = {}
    for p in predictions:
        seen.setdefault((p.gpu, p.precision), p)
    return ", ".join(f"{g} {p.efficiency:.0%} of peak " + ("(calibrated)" if p.calibrated
                                                           else "(uncalibrated, assumed)")
                     for (g, _), p in seen.items())


def step_breakdown(result, batch_size=None, title=None):
    """Stacked bars: where one step's time goes, per N, for one batch size (measured).

    ``result`` is a benchmark result (phases: :class:`~mgpu_lab.engines.base.Timings`); a list of
    predictions instead gives predicted compute and communication bars per N and strategy,
    and a dict {bar label: prediction} one bar per entry, labelled so (several networks).
    """
    if not isinstance(result, dict) or "rows" not in result:  # predictions
        return _predicted_breakdown(result, title)
    rows = _by_batch(result)[batch_size or max(_by_batch(result))]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels, bottom = [str(r["n_devices"]) for r in rows], [0.0] * len(rows)
    for phase in Timings.phases():
        ms = [max(0.0, 1e3 * r[f"t_{phase}"]) for r in rows]
        ax.bar(labels, ms, bottom=bottom, color=_PHASE_COLOURS[phase], label=phase)
        bottom = [a + b for a, b in zip(bottom, ms)]
    for i, r in enumerate(rows):  # the phases other than compute are thin: say how thin
        other = r["t_step"] - r["t_compute"]
        ax.annotate(f"not compute:\n{1e3 * other:.1f} ms ({other / r['t_step']:.1%})",
                    (i, bottom[i]), ha="center", va="bottom", fontsize=7)
    ax.set(title=title or f"Measured time per step, batch {rows[0]['batch_size']}",
           xlabel="devices N (CPU processes)", ylabel="time per step (ms)")
    ax.set_ylim(0, 1.15 * max(bottom))
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _finish(fig, ax, _bench_source(result).replace("; shaded: more devices than cores", ""))


def _predicted_breakdown(predictions, title=None):
    """Compute, the transfers and (host gather) the host's stacking and update, stacked."""
    if isinstance(predictions, dict):
        labels, ps = [str(k) for k in predictions], list(predictions.values())
        xlabel = "configuration"
    else:
        ps = sorted(predictions, key=lambda p: (p.gpu, p.strategy, p.n_gpus))
        labels, xlabel = [f"{p.n_gpus} {p.strategy}" for p in ps], "GPUs N and strategy"
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    parts = [("compute", [p.compute_s for p in ps], _PHASE_COLOURS["compute"]),
             ("communication: transfers", [p.comm_s - p.host_s for p in ps],
              _PHASE_COLOURS["comm"])]
    if any(p.host_s for p in ps):
        parts.append(("communication: the host's stacking and update", [p.host_s for p in ps],
                      _PHASE_COLOURS["stack"]))
    bottom = [0.0] * len(ps)
    for name, seconds, colour in parts:
        ms = [1e3 * t for t in seconds]
        ax.bar(labels, ms, bottom=bottom, color=colour, label=name)
        bottom = [a + b for a, b in zip(bottom, ms)]
    for i, p in enumerate(ps):  # the share the text talks about, on the bar
        ax.annotate(f"comm {p.comm_s / p.step_s:.0%}", (i, bottom[i]), ha="center",
                    va="bottom", fontsize=7)
    gpus = ", ".join(sorted({p.gpu for p in ps}))
    sizes = sorted({(p.n_gpus, p.batch_size) for p in ps})
    on = (f"{sizes[0][0]} {gpus}s, global batch {sizes[0][1]}" if len(sizes) == 1
          else f"{gpus}, batch {ps[0].batch_size}")
    ax.set(title=title or f"Predicted time per step on {on}", xlabel=xlabel,
           ylabel="time per step (ms)")
    ax.set_ylim(0, 1.12 * max(bottom))
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(frameon=False, fontsize=7, loc="upper left")
    return _finish(fig, ax, "predicted, not measured: mgpu_lab.predict.costmodel (bars add up unless "
                   f"overlap=True); compute efficiency {_efficiency_text(ps)}; rings at the GPU's "
                   "peer_bw (all its links), host transfers one at a time (a bound)")


# -- MPI ranks: host gather vs ring all-reduce (mgpu_lab.measure.mpi_bench.run) --------------------
__all__ += ["mpi_comm"]

_MPI_STYLE = {"host": ("C3", "o"), "ring": ("C0", "s"), "sharded": ("C2", "^"),
              "hierarchical": ("C4", "D")}


def _mpi_source(result):
    links = "; ".join(f"N={n}: {1e6 * v['latency_s']:.0f} us, {v['bandwidth_Bps'] / 1e9:.1f} GB/s"
                      for n, v in result["links"].items() if v)
    return (f"{machine_label(result['machine'])}; mpiexec -n N, MPIEngine steps, median of "
            f"repeats (bars: min-max)\npredicted (dashed): mgpu_lab.predict.algorithms with the "
            f"link measured by ping-pong ({links}) and the measured memory bandwidth")


def _mpi_panel(ax_comm, ax_step, rows, strategy):
    color, marker = _MPI_STYLE[strategy]
    mb = [r["bytes"] / 1e6 for r in rows]
    med = [1e3 * r["comm_s"] for r in rows]
    spread = [[m - 1e3 * r["comm_min_s"] for m, r in zip(med, rows)],
              [1e3 * r["comm_max_s"] - m for m, r in zip(med, rows)]]
    ax_comm.errorbar(mb, med, yerr=spread, color=color, marker=marker, capsize=2,
                     label=f"{strategy}: measured")
    if all(r.get("predicted_comm_s") is not None for r in rows):
        ax_comm.plot(mb, [1e3 * r["predicted_comm_s"] for r in rows], color=color, ls="--",
                     label=f"{strategy}: predicted")
    steps = [r for r in rows if "step_s" in r]
    if ax_step is not None and steps:
        smb = [r["bytes"] / 1e6 for r in steps]
        ax_step.plot(smb, [1e3 * r["step_s"] for r in steps], color=color, marker=marker,
                     label=f"{strategy}: whole step")
        ax_step.plot(smb, [1e3 * r["comm_s"] for r in steps], color=color, ls=":",
                     marker=marker, mfc="none", label=f"{strategy}: its communication")


def mpi_comm(result, title="MPI ranks: the strategies' exchanges, measured in training steps"):
    """Communication time vs gradient size, one panel per N: measured (solid, bars min-max)
    beside the cost model's prediction (dashed). Below, when measured: time per training
    step and its communication part. ``result``: :func:`mgpu_lab.measure.mpi_bench.run`."""
    ranks = sorted({r["n_ranks"] for r in result["rows"]})
    with_steps = any("step_s" in r for r in result["rows"])
    fig, axes = plt.subplots(2 if with_steps else 1, len(ranks), squeeze=False, sharex=True,
                             sharey="row", figsize=(0.8 + 3.3 * len(ranks), 1.4 + 3.0 * (1 + with_steps)))
    cores = result["machine"]["cores"]
    for j, n in enumerate(ranks):
        for s in _MPI_STYLE:
            rows = sorted((r for r in result["rows"] if r["n_ranks"] == n and r["strategy"] == s),
                          key=lambda r: r["bytes"])
            if rows:
                _mpi_panel(axes[0][j], axes[1][j] if with_steps else None, rows, s)
        over = " (oversubscribed)" if n > cores else ""
        axes[0][j].set_title(f"N = {n} ranks on {cores} cores{over}", fontsize=9)
        for ax in axes[:, j]:
            ax.set(xscale="log", yscale="log")
            ax.grid(alpha=0.3, which="both")
        axes[-1][j].set_xlabel("gradient size (MB)")
    axes[0][0].set_ylabel("communication time (ms)")
    axes[0][0].legend(frameon=False, fontsize=7)
    if with_steps:
        axes[1][0].set_ylabel("time per training step (ms)")
        axes[1][0].legend(frameon=False, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    provenance(axes[-1][0], _mpi_source(result))
    return fig


# -- memory: batch limits and where the bytes go (mgpu_lab.predict.memory) ---------------------------
__all__ += ["batch_limits", "memory_breakdown"]

_MEMORY_SOURCE = ("predicted by mgpu_lab.predict.memory from the graph; GPU memory from vendor "
                  "datasheets (mgpu_lab.predict.gpus)")


def batch_limits(rows, title="Largest batch that fits on 1..N GPUs (predicted)", claim=12):
    """Largest global batch vs number of GPUs, one line per GPU kind, one panel per model.
    ``rows``: :func:`mgpu_lab.predict.memory.predicted_limits`. ``claim``: marks the "about a
    dozen images" on one GPU that Bourez (2017), the chapter this book started from, gives
    for networks of a few hundred layers at 224 px: a reference point, not a measurement of
    the network drawn (None: no mark)."""
    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(names), squeeze=False, figsize=(0.8 + 3.6 * len(names), 3.9))
    for ax, name in zip(axes[0], names):
        mine = [r for r in rows if r["model"] == name]
        for i, gpu in enumerate(dict.fromkeys(r["gpu"] for r in mine)):
            pts = sorted((r["n_gpus"], r["global_batch"]) for r in mine if r["gpu"] == gpu)
            mem = next(r["memory_gib"] for r in mine if r["gpu"] == gpu)
            ax.plot(*zip(*pts), marker="o", lw=1.6, ls=("-", "--", "-.", ":")[i % 4],
                    label=f"{gpu} ({mem:.0f} GiB)")  # styles differ: equal memory overlaps
        if claim:
            ax.plot([1], [claim], marker="*", ms=12, color="k", ls="none",
                    label=f"Bourez 2017: ~{claim} images on 1 GPU\n(nets of a few hundred layers)")
        ax.set(title=name, xlabel="number of GPUs", ylabel="largest global batch (images)")
        ax.set_xticks(sorted({r["n_gpus"] for r in mine}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(frameon=False, fontsize=7)
    fig.suptitle(title)
    return _with_provenance(fig, axes[0][0], _MEMORY_SOURCE)


def _with_provenance(fig, ax, text):
    """Lay the figure out, then write ``text`` under ``ax`` with room kept for it."""
    fig.tight_layout()
    provenance(ax, text)
    fig.subplots_adjust(bottom=min(0.5, fig.subplotpars.bottom + 48 / 72 / fig.get_figheight() - 0.1))
    return fig


def memory_breakdown(estimates, xlabel="per-device batch (samples)", capacity=None,
                     title="Where one device's memory goes (predicted)",
                     source="predicted by mgpu_lab.predict.memory from the graph"):
    """Stacked bars of the named byte counts. ``estimates``: {x label (a batch size or an
    image size): :func:`mgpu_lab.predict.memory.estimate` dict}; ``capacity``: (bytes, label) to
    draw as a line, e.g. a GPU's memory."""
    labels = [str(k) for k in estimates]
    fig, ax = plt.subplots(figsize=(6.4, 3.9))
    bottom = [0.0] * len(labels)
    for term in TERMS:
        vals = [e[term] / 2 ** 20 for e in estimates.values()]
        if any(vals):
            ax.bar(labels, vals, bottom=bottom, label=term)
            bottom = [b + v for b, v in zip(bottom, vals)]
    if capacity:
        ax.axhline(capacity[0] / 2 ** 20, color="k", ls="--", lw=1, label=capacity[1])
    ax.set(title=title, xlabel=xlabel, ylabel="memory per device (MiB)")
    ax.legend(frameon=False, fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _with_provenance(fig, ax, source)


# -- the communication-bound criterion (mgpu_lab.predict.critical) ----------------------------
__all__ += ["critical_batch"]


def critical_batch(rows, links=("host link", "NVLink / peer link", "network")):
    """Bars: the critical batch per device b* for every GPU and link
    (``mgpu_lab.predict.critical.critical_batch_table`` rows: the rate R is the peak times
    the roofline's compute efficiency); an uncalibrated GPU's bars are hatched and its name
    says so."""
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    width = 0.8 / len(links)
    for j, link in enumerate(links):
        for i, r in enumerate(rows):
            ax.bar(i + (j - (len(links) - 1) / 2) * width, r[link], width, color=f"C{j}",
                   hatch=None if r["label"].startswith("calibrated") else "//",
                   label=link if i == 0 else None)
    names = [_gpu_label(r["gpu"]) + ("" if r["label"].startswith("calibrated")
                                     else " (uncalibrated)") for r in rows]
    # slanted: side by side, "H100 (uncalibrated)" and "H100-PCIe (uncalibrated)" overlap
    ax.set_xticks(range(len(rows)), names, fontsize=7, rotation=30, ha="right",
                  rotation_mode="anchor")
    ax.set(yscale="log", title="Below b* a step communicates longer than it computes (predicted)",
           ylabel="critical batch per device b*\n(samples of an MLP, tokens of a transformer)")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    net = rows[0]["network_name"]
    renderer = fig.canvas.get_renderer()  # the slanted labels' height, points
    tall = max(t.get_window_extent(renderer).height for t in ax.get_xticklabels()) * 72 / fig.dpi
    return _finish(fig, ax, "predicted, not measured: mgpu_lab.predict.critical, b* = (4/3) x "
                   "R / link bytes/s (6P FLOPs per sample or token, 2 x 4P bytes per step); "
                   "R = datasheet peak x the roofline's compute efficiency, the rate of "
                   "arithmetic-bound kernels (calibrated, or uncalibrated: assumed, hatched); "
                   f"links from the datasheets; network: {net}", below=20 + tall)


# -- where the state lives (chapter 9) and what crosses (chapter 8) --------------------------
__all__ += ["strategy_memory", "mem_bench", "bytes_against_n"]

_STATE_COLOURS = {"parameters": "tab:blue", "gradients": "tab:orange", "optimizer": "tab:green"}


def strategy_memory(counted, predicted, title=None, source=""):
    """Stacked bars (parameters, gradients, optimizer) of each device's bytes under each
    strategy: ``counted`` {strategy: [per-device dict]} (``engine.device_memory()``) beside
    ``predicted`` {strategy: [per-device dict]} (``memory.predicted_device_memory``; a
    strategy missing there is drawn counted only)."""
    fig, ax = plt.subplots(figsize=(7.6, 3.9))
    labels, x = [], 0.0
    seen = set()
    for strategy, devices in counted.items():
        for i, d in enumerate(devices):
            pairs = [("counted", d, 1.0)]
            if strategy in predicted:
                pairs.append(("predicted", predicted[strategy][i], 0.45))
            for k, (kind, dd, alpha) in enumerate(pairs):
                bottom = 0.0
                for term, colour in _STATE_COLOURS.items():
                    v = dd.get(term, 0) / 2 ** 10
                    label = f"{term} ({kind})" if (term, kind) not in seen else None
                    seen.add((term, kind))
                    ax.bar(x + 0.4 * k, v, 0.38, bottom=bottom, color=colour, alpha=alpha,
                           label=label, hatch="//" if kind == "predicted" else None,
                           edgecolor="white" if kind == "counted" else colour)
                    bottom += v
            labels.append((x + 0.2 * (len(pairs) - 1), f"{strategy}\ndevice {i}"))
            x += 1.0
        x += 0.4  # a gap between strategies
    ax.set_xticks([p for p, _ in labels], [t for _, t in labels], fontsize=7)
    ax.set(title=title or "Model state per device and strategy: counted (solid) beside "
                          "predicted (hatched)", ylabel="bytes per device (KiB)")
    ax.title.set_fontsize(9)
    ax.margins(y=0.35)  # room for the legend above the tallest bar
    ax.legend(frameon=False, fontsize=6, ncol=2, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, ax, source)


def mem_bench(result, title=None):
    """A :func:`mgpu_lab.measure.mem_bench.run` result: each worker's resident memory per
    strategy (left), and the differences between strategies measured beside the memory
    model's prediction (right)."""
    MiB = 2 ** 20
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.6, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    n = result["n_devices"]
    names = [r["strategy"] for r in result["rows"]]
    for d in range(n):
        ax.bar([i + (d - (n - 1) / 2) * 0.8 / n for i in range(len(names))],
               [r["rss"][d] / MiB for r in result["rows"]], 0.8 / n, label=f"device {d}")
    ax.set_xticks(range(len(names)), names)
    ax.set(xlabel="strategy", ylabel="resident memory per worker (MiB)",
           title="Measured: each worker's resident memory")
    keys = list(result["predicted"])
    bx.bar([i - 0.2 for i in range(len(keys))], [result["measured"][k] / MiB for k in keys],
           0.4, label="measured (means over devices)")
    bx.bar([i + 0.2 for i in range(len(keys))], [result["predicted"][k] / MiB for k in keys],
           0.4, label="predicted (mgpu_lab.predict.memory)", hatch="//", alpha=0.6)
    bx.set_xticks(range(len(keys)), keys)
    bx.set(ylabel="difference per worker (MiB)", title="Differences: measured beside predicted")
    for a in (ax, bx):
        a.margins(y=0.3)  # room for the legend above the bars
        a.legend(frameon=False, fontsize=7, loc="upper right")
    for a in (ax, bx):
        a.title.set_fontsize(9)
        a.grid(alpha=0.3, axis="y")
    P = result["n_params"]
    fig.suptitle(title or f"{n} devices, an MLP of {P:,} parameters (4P = {4 * P / MiB:.1f} "
                          f"MiB), {result['optimizer']}, after {result['steps']} steps",
                 fontsize=10)
    return _finish(fig, ax, f"{machine_label(result['machine'])}; resident set from psutil "
                            f"(mgpu_lab.measure.mem_bench); predicted by mgpu_lab.predict.memory")


def bytes_against_n(ns, series, title, source, ylabel="bytes per device per step"):
    """Bytes against the number of devices N, one line per entry of ``series``
    {label: (values, style)}; y in KiB."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, (values, style) in series.items():
        ax.plot(list(ns), [v / 2 ** 10 for v in values], style, label=label)
    ax.set_xticks(list(ns), [str(n) for n in ns])
    ax.set(title=title, xlabel="number of devices N", ylabel=f"{ylabel} (KiB)")
    ax.title.set_fontsize(9)
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=7)
    ax.grid(alpha=0.3)
    return _finish(fig, ax, source)


# -- the gradient noise scale (mgpu_lab.statistics, tracked by the trainer) ------------------
__all__ += ["noise_scale", "NOISE_SCALE_METHOD"]


def _noise_runs(histories):
    """{label: history} from one trainer.history or a dict of them; each must carry the
    trainer's noise-scale keys (two or more devices)."""
    runs = histories if isinstance(histories, dict) else {"B_simple": histories}
    for label, hist in runs.items():
        if not any(h.get("b_simple") is not None for h in hist):
            raise ValueError(f"history {label!r} holds no noise scale: train on 2 or more "
                             f"devices (one device has no second batch size)")
    return runs


def noise_scale(histories, machine=None, title="Gradient noise scale during training",
                source=None):
    """B_simple = tr(Σ)/|G|² against the step (left), and the two averaged estimators
    apart (right), from ``trainer.history`` (or {label: history}) of a run on N >= 2
    devices. ``machine``: the :func:`~mgpu_lab.measure.machine.machine_info` dict of the
    machine that trained (default: this one); ``source`` replaces the provenance line."""
    runs = _noise_runs(histories)
    fig, (ax_b, ax_e) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for i, (label, hist) in enumerate(runs.items()):
        rows = [h for h in hist if h.get("b_simple") is not None]
        steps = [h["step"] for h in rows]
        colour = f"C{i}"
        ax_b.plot(steps, [h["b_simple"] for h in rows], color=colour, lw=1.6, label=label)
        ax_e.plot(steps, [h["trace_sigma"] for h in rows], color=colour, lw=1.6,
                  label=f"tr(Σ), {label}" if len(runs) > 1 else "tr(Σ)")
        ax_e.plot(steps, [h["grad_sq"] for h in rows], color=colour, lw=1.6, ls="--",
                  label=f"|G|², {label}" if len(runs) > 1 else "|G|²")
    ax_b.set(title="B_simple = tr(Σ) / |G|²", xlabel="training step",
             ylabel="noise scale (samples per batch)")
    ax_b.set_ylim(bottom=0)
    ax_e.set(title="the two estimators (moving averages)", xlabel="training step",
             ylabel="squared gradient norm (nats²)", yscale="log")
    for ax in (ax_b, ax_e):
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=10)
    _finish(fig, ax_b, source or f"{machine_label(machine)}; {NOISE_SCALE_METHOD}")
    fig.subplots_adjust(top=0.84)  # room for the suptitle above the panels' titles
    return fig


# How every noise-scale figure's B_simple is made (its provenance line; tta_plots too).
NOISE_SCALE_METHOD = ("from each step's |g_i|² (each device's mean gradient) and |g|² (the "
                      "stacked batch), McCandlish et al. 2018 App. A.1 (mgpu_lab.statistics); "
                      "exponential moving averages of tr(Σ) and |G|², then their ratio")


# -- the roofline: each kernel's arithmetic intensity against each GPU's ridge (chapter 11) --
__all__ += ["roofline"]

_KIND_STYLE = {"convolution": ("tab:blue", "o"), "matrix product": ("tab:purple", "s"),
               "elementwise": ("tab:orange", "^"), "reduction, pool, softmax": ("tab:gray", "v")}


def roofline(panels, source, title="Arithmetic intensity of every kernel against each GPU's "
                                   "ridge point (predicted)"):
    """One panel per entry of ``panels`` (dicts with ``title``, ``kernels`` {network:
    :func:`mgpu_lab.predict.costmodel.kernel_intensities` rows} and ``ridges``
    (:func:`~mgpu_lab.predict.costmodel.ridge_points` rows)): every kernel a mark at its
    FLOPs per byte, one strip per network; each GPU's ridge a vertical line, solid at its
    datasheet peak / bandwidth, dashed where the cost model puts it (the calibrated compute
    and memory efficiencies). A kernel left of a GPU's line is bound by memory there."""
    import random
    fig, axes = plt.subplots(len(panels), 1, figsize=(10.4, 1.4 + 2.3 * len(panels)),
                             squeeze=False)
    rng = random.Random(0)  # the vertical jitter only spreads the marks
    names = list(dict.fromkeys(r["gpu"] for p in panels for r in p["ridges"]))
    for ax, panel in zip(axes[:, 0], panels):
        nets = list(panel["kernels"])
        for y, net in enumerate(nets):
            for kind, (colour, marker) in _KIND_STYLE.items():
                xs = [k["intensity"] for k in panel["kernels"][net]
                      if k["kind"] == kind and k["intensity"] > 0]
                ax.scatter(xs, [y + rng.uniform(-0.3, 0.3) for _ in xs], s=9, color=colour,
                           marker=marker, alpha=0.6, lw=0, label=kind if y == 0 and xs else None)
        kinds = ax.legend(frameon=False, fontsize=7, loc="upper left", ncol=4,
                          title="kernels", title_fontsize=7)
        lines = []
        for r in panel["ridges"]:
            colour = f"C{names.index(r['gpu']) % 10}"
            lines.append(ax.axvline(r["ridge"], color=colour, lw=1.5,
                                    label=f"{_gpu_label(r['gpu'])} {r['runs_as']}: {r['ridge']:.0f} "
                                          f"({r['model_ridge']:.0f} as charged)"))
            ax.axvline(r["model_ridge"], color=colour, lw=1.0, ls="--", alpha=0.8)
        ax.legend(handles=lines, frameon=False, fontsize=7, loc="center left",
                  bbox_to_anchor=(1.01, 0.5), title="ridge, FLOPs per byte", title_fontsize=7)
        ax.add_artist(kinds)
        ax.set(xscale="log", yticks=range(len(nets)), yticklabels=nets,
               ylim=(-0.6, len(nets) + 0.1), title=panel["title"],
               xlabel="arithmetic intensity (FLOPs per byte moved to and from GPU memory)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3, axis="x", which="major")
    fig.suptitle(title, fontsize=10)
    return _finish(fig, axes[-1, 0], source)
