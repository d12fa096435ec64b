"""Web explorers: controls that work in the static web book, with no kernel and no network.

When the book is built, each explorer asks the library for *every* setting its controls
can take (the memory model for chapter 7, the cost model for chapter 6) and returns one
HTML snippet: the controls and a ``<script type="application/json">`` holding all the
computed numbers. The book's scripts (``book/_static/mgpu-explorer.js`` and
``explorer-<kind>.js``) look the chosen setting up and redraw the numbers and a Vega-Lite
chart. Nothing is computed in the browser but look-ups (and the global batch N x per-GPU
limit, which is how :func:`~mgpu_lab.predict.memory.max_batch_size` defines it). Vega and
Vega-Lite are vendored in ``book/_static/vendor``; the book's Sphinx extension adds them
and the explorer scripts to the pages that hold an explorer (found by the
``mgpu-explorer`` class). In JupyterLab, which runs none of those scripts, an explorer is a
Vega-Lite chart of the same numbers that the lab draws itself (:mod:`.labcharts`).

    batch_limits()            chapter 7: GPU x image size x depth x optimizer x sharding x
                              precision x recomputation x N GPUs
    throughput(measured=...)  chapter 6: network x GPU x N x strategy x overlap x batch
"""
import hashlib
import html
import json
import os
import time
from pathlib import Path

from .. import models, presets
from ..measure.machine import machine_label
from ..predict import costmodel, gpus, memory, precision as _precision
from ..sources import library_hash
from . import labcharts, tables

__all__ = ["OPTIMIZERS", "LIMIT_SIZES", "LIMIT_DEPTHS", "SHARDING", "SHARDING_LABELS",
           "LIMIT_PRECISIONS", "PRECISION_LABELS", "RECOMPUTE", "RECOMPUTE_LABELS",
           "LIMIT_GPUS", "MEMORY_PARTS", "THROUGHPUT_NETS", "how_key",
           "THROUGHPUT_BATCHES", "limits_grid", "memory_parts", "batch_limits_data", "limits_parts",
           "batch_limits", "throughput_data", "hidden_seconds", "throughput"]

OPTIMIZERS = tuple(memory.OPTIMIZER_SLOTS)
# The grid of chapter 7. Each network costs a graph build and six graph walks (three per
# precision; 1-6 s of CPU): 4 sizes x 4 depths x 9 GPUs x every other setting took 31 s of
# CPU on the 2-core build VM (2026-12-07), its JSON 0.7 MB (ResNet-200 and the sizes 96
# and 160 would more than double both; the kernel widget still offers them).
LIMIT_SIZES = (32, 64, 128, 224)
LIMIT_DEPTHS = (26, 50, 101, 152)
# ZeRO stages (memory.SHARDING_STAGES) and GPU counts: with sharding the per-GPU limit
# depends on N, so the grid holds every N of the slider.
SHARDING = tuple(memory.SHARDING_STAGES)
SHARDING_LABELS = {0: "none", 1: "1: optimizer state", 2: "2: + gradients",
                   3: "3: + parameters"}
LIMIT_GPUS = tuple(range(1, 9))
# Precision as the memory model sees it: 4 or 2 bytes a value (tf32 stores as fp32, bf16 as
# fp16: memory.estimate gives them equal), so two settings cover the four precisions; and
# activation recomputation off or on. Neither costs a graph build: a 16-bit replay is a few
# more graph walks, recomputation none (it reads the same replay).
LIMIT_PRECISIONS = ("fp32", "fp16")
PRECISION_LABELS = {"fp32": "fp32 or tf32 (4 bytes)", "fp16": "fp16 or bf16, mixed (2 bytes)"}
RECOMPUTE = (False, True)
RECOMPUTE_LABELS = {False: "off", True: "on (sqrt(L) checkpoints)"}
MEMORY_PARTS = ("parameters", "gradients", "optimizer", "activations", "other")
# chapter 6: the book's ImageNet nets (presets.imagenet_model names) and batch choices
THROUGHPUT_NETS = {"ResNet-50-like": "resnet", "VGG-16-like": "vgg16"}
THROUGHPUT_BATCHES = (("per_gpu", 32), ("per_gpu", 64), ("per_gpu", 128),
                      ("global", 256), ("global", 1024))


# -- a cache on disk: the same library and grid give the same numbers ---------------------
def _cache_path(kind, params):
    """``$MGPU_CACHE_DIR`` (default ``~/.cache/mgpu_lab``)/``<kind>-<sha256>.json``, the
    hash taken over the grid's parameters and :func:`~mgpu_lab.sources.library_hash`."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(library_hash().encode())
    root = Path(os.environ.get("MGPU_CACHE_DIR") or Path.home() / ".cache" / "mgpu_lab")
    return root / f"explorer-{kind}-{h.hexdigest()[:24]}.json"


def _cached(kind, params, compute):
    """``compute()``'s JSON-able result, kept on disk: a book build and a notebook run on
    the same library then compute a grid once (it takes a minute or more)."""
    path = _cache_path(kind, params)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    result = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(path)  # whole or not at all
    except OSError:
        pass  # a read-only home: compute again next time
    return result


# -- chapter 7: the memory model over the grid ------------------------------------------
def limits_grid(model, kinds, optimizers=OPTIMIZERS, reserved=gpus.DEFAULT_RESERVED,
                stages=(0,), counts=(1,), precisions=("fp32",), recomputes=(False,)):
    """{(gpu name, optimizer): (largest split, estimate at it)} for one network, on each
    GPU's memory less ``reserved`` bytes (:func:`mgpu_lab.predict.gpus.usable_bytes`);
    with ``stages`` (ZeRO sharding), ``counts`` (GPUs), ``precisions`` or ``recomputes``
    other than the default, keyed ``(gpu name, optimizer, stage, N)``, or
    ``(gpu name, optimizer, stage, N, precision, recompute)`` where a precision or
    recomputation is asked for.

    Equal to :func:`memory.max_batch_size` (per GPU) and :func:`memory.estimate`, found
    by :func:`memory.split_limits` with three graph walks per precision instead of dozens.
    """
    grid = {}
    for p in precisions:
        for rc in sorted(recomputes, reverse=True):  # recomputation first: the larger
            how = (p, rc)                          # splits prove the line for both
            cases = [(g, o, s, n) for g in kinds for o in optimizers for s in stages
                     for n in counts]
            state = {(o, s, n): max(sum(d.values())
                                    for d in memory.model_state(model, o, s, n, p))
                     for o in optimizers for s in stages for n in counts}
            budgets = [gpus.usable_bytes(g, reserved) - state[o, s, n] for g, o, s, n in cases]
            for (g, o, s, n), per in zip(cases, memory.split_limits(model, budgets, *how)):
                grid[g.name, o, s, n, *how] = (per, memory.estimate(model, max(per, 1), o, s,
                                                                    n, *how))
    if tuple(precisions) == ("fp32",) and tuple(recomputes) == (False,):
        if tuple(stages) == (0,) and tuple(counts) == (1,):
            return {(g, o): v for (g, o, _, _, _, _), v in grid.items()}
        return {k[:4]: v for k, v in grid.items()}
    return grid


def how_key(precision, recompute):
    """The key of a precision and recomputation setting in the grid's ``step`` table:
    "fp32", "fp16", "fp32+recompute", "fp16+recompute" (the page's script builds it alike)."""
    return precision + ("+recompute" if recompute else "")


def memory_parts(est):
    """The chart's five parts (bytes): 'other' = inputs + transient + workspace."""
    other = est["inputs"] + est["transient"] + est["workspace"]
    return [est["parameters"], est["gradients"], est["optimizer"], est["activations"], other]


def batch_limits_data(sizes=LIMIT_SIZES, depths=LIMIT_DEPTHS, kinds=None, cache=True):
    """Everything chapter 7's explorer shows: per-GPU limit and memory parts (bytes) for
    every GPU kind x image size x depth x optimizer x sharding (ZeRO stage) x precision x
    recomputation x number of GPUs, flattened in that order (kept on disk with ``cache``:
    see :func:`_cached`)."""
    kinds = list(kinds or gpus.gpu_names())
    args = (list(sizes), list(depths), kinds)
    if cache:
        return _cached("batch-limits", args, lambda: _limits_data(*args))
    return _limits_data(*args)


def _limits_data(sizes, depths, kinds):
    """The grid, factored so that the page stays small: ``per_gpu`` for every setting
    (flat, in axis order); ``state[size x depth][precision][optimizer][stage][N - 1]``:
    parameters, gradients, optimizer bytes; ``step[size x depth][how][split]`` (``how``:
    :func:`how_key`): activations and other bytes at each split that occurs.
    :func:`limits_parts` puts a setting's five parts together."""
    t0 = time.perf_counter()
    kinds = [gpus.get_gpu(g) for g in kinds]
    per_gpu, state, step, grids = [], {}, {}, {}
    for size in sizes:
        for depth in depths:
            key = f"{size}x{depth}"
            grids[key] = limits_grid(models.resnet_like(depth, image_size=size), kinds,
                                     stages=SHARDING, counts=LIMIT_GPUS,
                                     precisions=LIMIT_PRECISIONS, recomputes=RECOMPUTE)
            state[key] = {p: {o: [[None] * len(LIMIT_GPUS) for _ in SHARDING]
                              for o in OPTIMIZERS} for p in LIMIT_PRECISIONS}
            step[key] = {how_key(p, rc): {} for p in LIMIT_PRECISIONS for rc in RECOMPUTE}
            for (_, o, stage, n, p, rc), (per, est) in grids[key].items():
                parts = [int(v) for v in memory_parts(est)]
                state[key][p][o][stage][n - 1] = parts[:3]
                step[key][how_key(p, rc)][str(max(per, 1))] = parts[3:]
    for g in kinds:
        for size in sizes:
            for depth in depths:
                grid = grids[f"{size}x{depth}"]
                for o in OPTIMIZERS:
                    for stage in SHARDING:
                        for p in LIMIT_PRECISIONS:
                            for rc in RECOMPUTE:
                                for n in LIMIT_GPUS:
                                    per_gpu.append(int(grid[g.name, o, stage, n, p, rc][0]))
    return {"axes": {"gpu": [g.name for g in kinds], "image_size": list(sizes),
                     "depth": list(depths), "optimizer": list(OPTIMIZERS),
                     "sharding": list(SHARDING), "precision": list(LIMIT_PRECISIONS),
                     "recompute": list(RECOMPUTE), "n_gpus": list(LIMIT_GPUS)},
            "sharding_labels": [SHARDING_LABELS[k] for k in SHARDING],
            "precision_labels": [PRECISION_LABELS[p] for p in LIMIT_PRECISIONS],
            "recompute_labels": [RECOMPUTE_LABELS[r] for r in RECOMPUTE],
            "gpus": {g.name: {"memory_bytes": g.memory_bytes, "source": g.source,
                              "usable_bytes": gpus.usable_bytes(g)} for g in kinds},
            "reserved_bytes": gpus.DEFAULT_RESERVED, "parts": list(MEMORY_PARTS),
            "per_gpu": per_gpu, "state": state, "step": step,
            "seconds": round(time.perf_counter() - t0, 1)}


def limits_parts(d, **setting):
    """The five memory parts (bytes) of :func:`batch_limits_data` ``d`` at ``setting``
    (a value for every axis), as the page's script looks them up."""
    per = d["per_gpu"][_flat_index(d["axes"], **setting)]
    key, p = f"{setting['image_size']}x{setting['depth']}", setting["precision"]
    state = d["state"][key][p][setting["optimizer"]][setting["sharding"]]
    step = d["step"][key][how_key(p, setting["recompute"])]
    return state[d["axes"]["n_gpus"].index(setting["n_gpus"])] + step[str(max(per, 1))]


# -- chapter 6: the cost model over the grid --------------------------------------------
_PRED_FIELDS = ("images_per_s", "speedup", "scaling_efficiency", "compute_s", "comm_s",
                "step_s", "split", "batch_size")


def _gpu_costs(gpu):
    """What the cost model takes from the catalogue for ``gpu``, with its sources."""
    c = costmodel.calibration_for(gpu)  # as predict() uses it: calibrated, or labelled
    return {"source": gpu.source, "efficiency": c["efficiency"], "efficiency_source": c["label"],
            "calibrated": c["calibrated"]}


def _global_batch(mode, value, n):
    return n * value if mode == "per_gpu" else value


def throughput_data(nets=THROUGHPUT_NETS, kinds=None, n_range=range(1, 9),
                    batches=THROUGHPUT_BATCHES, cache=True):
    """Every prediction chapter 6's explorer shows: :func:`costmodel.predict` for every
    network x GPU kind x batch x strategy x overlap x N, each field flattened in that order
    (floats to 7 significant digits; kept on disk with ``cache``)."""
    args = (dict(nets), list(kinds or gpus.gpu_names()), list(n_range),
            [list(b) for b in batches])
    if cache:
        return _cached("throughput", args, lambda: _throughput_data(*args))
    return _throughput_data(*args)


def hidden_seconds(p):
    """The part of prediction ``p``'s communication hidden under its compute by overlap:
    compute + communication - step (0 without overlap). The step's bar draws compute,
    then the communication that is not hidden (step - compute), and marks this part."""
    if not p.overlap:
        return 0.0  # the step is the sum (not round-off away from it)
    return max(0.0, min(p.comm_s, p.compute_s + p.comm_s - p.step_s))


def _throughput_data(nets, kinds, n_range, batches):
    t0 = time.perf_counter()
    kinds = [gpus.get_gpu(g) for g in kinds]
    fields = {f: [] for f in (*_PRED_FIELDS, "hidden_s")}
    for name, preset in nets.items():
        model = presets.imagenet_model(preset)
        for g in kinds:
            for mode, value in batches:
                for strategy in ("host", "ring"):
                    for overlap in (False, True):
                        for n in n_range:
                            p = costmodel.predict(model, g, n, _global_batch(mode, value, n),
                                                  strategy=strategy, overlap=overlap)
                            for f in _PRED_FIELDS:
                                v = getattr(p, f)
                                fields[f].append(v if isinstance(v, int) else float(f"{v:.7g}"))
                            fields["hidden_s"].append(float(f"{hidden_seconds(p):.7g}"))
    return {"axes": {"net": list(nets), "gpu": [g.name for g in kinds],
                     "batch": [f"{v} per GPU" if m == "per_gpu" else f"{v} in all"
                               for m, v in batches],
                     "strategy": ["host", "ring"], "overlap": [False, True],
                     "n_gpus": list(n_range)},
            "gpus": {g.name: _gpu_costs(g) for g in kinds},
            "latency_s": costmodel.DEFAULT_LATENCY,
            "fields": fields, "seconds": round(time.perf_counter() - t0, 1)}


# -- the HTML: controls, data, and a small renderer ---------------------------------------
def _select(name, label, options, value, texts=None):
    texts = texts or [str(o) for o in options]
    opts = "".join(f'<option value="{i}"{" selected" if o == value else ""}>{html.escape(t)}'
                   f"</option>" for i, (o, t) in enumerate(zip(options, texts)))
    return (f'<label class="mgpu-control">{html.escape(label)} '
            f'<select name="{name}">{opts}</select></label>')


def _slider(name, label, lo, hi, value):
    return (f'<label class="mgpu-control">{html.escape(label)} <input type="range" '
            f'name="{name}" min="{lo}" max="{hi}" step="1" value="{value}"> '
            f'<output data-field="{name}">{value}</output></label>')


def _flat_index(axes, **setting):
    """Where ``setting`` (a value for every axis) sits in the flattened grid; a value
    off the grid is a ValueError that lists the grid's values."""
    i = 0
    for name, values in axes.items():
        if setting[name] not in list(values):
            raise ValueError(f"{name}={setting[name]!r} is not on the explorer's grid: "
                             f"choose one of {list(values)}")
        i = i * len(values) + list(values).index(setting[name])
    return i


def _grid_precision(precision):
    """The limits grid's name for ``precision``: tf32 is stored as fp32 and bf16 as fp16
    (the same bytes), so the grid holds those two only."""
    return "fp16" if _precision.is_mixed(_precision.check_precision(precision)) else "fp32"


def _field(name, text=""):
    return f'<b data-field="{name}">{html.escape(str(text))}</b>'


def _page(kind, controls, body, provenance, data, after=""):
    """One explorer: a <div class="mgpu-explorer"> the extension and the tests find; the
    book's ``_static/mgpu-explorer.js`` starts it (``explorer-<kind>.js`` redraws it)."""
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    style = ("border:1px solid #ccc;border-radius:6px;padding:0.8em 1em;margin:1em 0;"
             "font-size:0.95em")
    return (f'<div class="mgpu-explorer" data-explorer="{kind}" style="{style}">'
            f'<form class="mgpu-controls" style="display:flex;flex-wrap:wrap;gap:0.4em 1.2em;'
            f'margin-bottom:0.6em" onsubmit="return false">{controls}</form>{body}'
            f'<div class="mgpu-chart" style="overflow-x:auto"></div>'
            f'<p class="mgpu-provenance" style="font-size:0.8em;color:#555;margin:0.4em 0 0">'
            f"{provenance}</p>{after}"
            f'<script type="application/json" class="mgpu-data">{payload}</script></div>')


# -- chapter 7's explorer -----------------------------------------------------------------
def batch_limits(gpu="V100", image_size=224, depth=50, n_gpus=4, optimizer="momentum",
                 sharding=0, precision="fp32", recompute=False, data=None):
    """Chapter 7's explorer (a :class:`~.labcharts.Explorer`: HTML in the web book,
    Vega-Lite in JupyterLab): the predicted largest batch per GPU and for N GPUs, and the
    busiest GPU's memory at it, for every setting of its controls (``sharding``: the ZeRO
    stage, 0 for none, chapter 9; ``precision``: "fp32" (or tf32) or "fp16" (or bf16,
    mixed); ``recompute``: activation recomputation)."""
    d = data or batch_limits_data()
    ax, labels = d["axes"], d["sharding_labels"]
    precision = _grid_precision(precision)
    i = _flat_index(ax, gpu=gpu, image_size=image_size, depth=depth, optimizer=optimizer,
                    sharding=sharding, precision=precision, recompute=recompute,
                    n_gpus=n_gpus)  # first: a setting off the grid is refused here
    controls = (_select("gpu", "GPU", ax["gpu"], gpu)
                + _select("image_size", "image px", ax["image_size"], image_size)
                + _select("depth", "depth", ax["depth"], depth)
                + _slider("n_gpus", "GPUs", 1, 8, n_gpus)
                + _select("optimizer", "optimizer", ax["optimizer"], optimizer)
                + _select("sharding", "sharding", ax["sharding"], sharding, labels)
                + _select("precision", "precision", ax["precision"], precision,
                          d["precision_labels"])
                + _select("recompute", "recomputation", ax["recompute"], recompute,
                          d["recompute_labels"]))
    label = labels[ax["sharding"].index(sharding)]
    p_label = d["precision_labels"][ax["precision"].index(precision)]
    rc_label = d["recompute_labels"][ax["recompute"].index(recompute)]
    parts = ", ".join(f"{p} {_field('bytes_' + p)}" for p in d["parts"])
    body = (f'<p class="mgpu-summary">ResNet-{_field("depth", depth)}-like at '
            f'{_field("image_size", image_size)} px on {_field("n_gpus", n_gpus)} x '
            f'{_field("gpu", gpu)} ({_field("gpu_gib")} GiB each), optimizer '
            f'{_field("optimizer", optimizer)}, sharding {_field("sharding", label)}, '
            f'precision {_field("precision", p_label)}, recomputation '
            f'{_field("recompute", rc_label)}: at most '
            f'{_field("per_gpu")} images per GPU, a global batch of {_field("global_batch")} '
            f'(predicted).{_field("none_fits")}</p><p style="font-size:0.85em">The busiest '
            f'GPU at that split, GiB: {parts}; total {_field("bytes_total")}.</p>')
    sizes = " x ".join(str(len(v)) for v in ax.values())
    prov = ("predicted by mgpu_lab.predict.memory from each network's graph "
            "(mgpu_lab.models.resnet_like); GPU figures from: "
            f'<span data-field="source">{html.escape(d["gpus"][gpu]["source"])}</span>. '
            f"All {sizes} settings (GPU x image size x depth x optimizer x sharding x "
            "precision x recomputation x GPUs) "
            "were computed when the book was built; N GPUs hold N times one GPU's split. "
            "Sharding (ZeRO stages 1-3, chapter 9) keeps 1/N of the optimizer state, the "
            "gradients, the parameters on each GPU; stages 2 and 3 are predicted only. Mixed "
            "precision (fp16 or bf16) stores activations, gradients and the weights' working "
            "copy in 16 bits and keeps float32 master weights with the optimizer state "
            "(ZeRO's accounting, DeepSpeed's; PyTorch's autocast keeps float32 weights and "
            "gradients instead, about 2 bytes per parameter more); tf32 stores float32. "
            "Recomputation keeps about sqrt(L) of "
            "the L activations the backward pass reads and makes the rest again (Chen et al. "
            "2016), at about one more forward pass per step. All of "
            f"each GPU's memory less {d['reserved_bytes'] // 2 ** 20} MiB reserved for the CUDA "
            "context and the framework (an assumption: mgpu_lab.predict.gpus.DEFAULT_RESERVED), "
            "as in memory.max_batch_size(model, gpus.usable_bytes(gpu), N, optimizer, sharding,"
            " precision, recompute); the book trains with momentum.")
    text = (f"ResNet-{depth}-like at {image_size} px on {n_gpus} x {gpu}, {optimizer}, "
            f"sharding {label}, {p_label}, recomputation {rc_label}: at most "
            f"{d['per_gpu'][i]:,} images per GPU, a global batch of "
            f"{n_gpus * d['per_gpu'][i]:,} (predicted)")
    return labcharts.Explorer(
        _page("batch-limits", controls, body, prov, d),
        labcharts.batch_limits_spec(d, gpu, image_size, depth, n_gpus, optimizer, sharding,
                                    precision, recompute),
        text)


# -- chapter 6's explorer -----------------------------------------------------------------
def _measured_block(result):
    """The build machine's measured rows, apart from the predictions and labelled so."""
    columns = [("n_devices", "devices"), ("batch_size", "batch"),
               ("images_per_s", "images/s", ",.1f"), ("speedup", "speed-up", ".2f"),
               (lambda r: 1e3 * r["t_compute"], "ms: compute", ".2f"),
               (lambda r: 1e3 * r["t_step"], "ms: step", ".2f"),
               ("foreign_load_cores", "other load (cores)", ".2f")]
    caption = (f"{machine_label(result['machine'])}: the benchmark CNN "
               f"({result['model']['n_params']:,} params) on this machine's simulated "
               "devices, not the networks or GPUs above")
    table = tables.html_table(result["rows"], columns, caption=caption)
    return ('<div class="mgpu-measured" style="margin-top:0.8em"><p style="margin:0">'
            "<b>Measured</b> when the book was built (not predicted):</p>"
            f"{table._repr_html_()}</div>")


def throughput(measured=None, net="ResNet-50-like", gpu="V100", n_gpus=4, strategy="host",
               overlap=False, batch="64 per GPU", data=None):
    """Chapter 6's explorer (a :class:`~.labcharts.Explorer`): predicted images/s, speed-up,
    efficiency and compute/communication time for every setting of its controls; below it,
    apart, the rows ``measured`` by :func:`mgpu_lab.measure.bench.run` (if given)."""
    d = data or throughput_data()
    ax = d["axes"]
    controls = (_select("net", "network", ax["net"], net)
                + _select("gpu", "GPU", ax["gpu"], gpu)
                + _slider("n_gpus", "GPUs", min(ax["n_gpus"]), max(ax["n_gpus"]), n_gpus)
                + _select("strategy", "strategy", ax["strategy"], strategy,
                          ["host gather", "ring all-reduce"])
                + _select("overlap", "overlap", ax["overlap"], overlap, ["off", "on"])
                + _select("batch", "batch", ax["batch"], batch))
    f = _field
    body = (f'<p class="mgpu-summary">{f("net", net)} on {f("n_gpus", n_gpus)} x '
            f'{f("gpu", gpu)}, global batch {f("batch_size")} ({f("split")} on the busiest '
            f'GPU), strategy {f("strategy", strategy)}, overlap {f("overlap")}: '
            f'{f("images_per_s")} images/s, a speed-up of {f("speedup")} over one GPU with '
            f'the same global batch, scaling efficiency {f("scaling_efficiency")} '
            "(predicted). One step: "
            f'{f("step_s")} ms; compute {f("compute_s")} ms, communication {f("comm_s")} ms'
            f', of which {f("hidden_s")} ms is hidden under compute by overlap'
            ". Without overlap the step is their sum. With overlap the gradients leave while "
            "the backward pass makes them: a ring's step is the forward pass plus the longer "
            "of the backward pass and the exchange, while the host gather's update and its "
            "return of the parameters wait for every gradient and add to that (the return "
            "can hide only under the next forward pass). The bar on the right is the step: "
            "compute, then the communication that adds to it; the lighter, dashed part "
            "inside the compute is the communication hidden by overlap.</p>")
    g = d["gpus"][gpu]
    efficiency = f"{100 * g['efficiency']:.1f} %"
    prov = ("predicted by mgpu_lab.predict.costmodel: a roofline per kernel of each "
            "network's graph, its FLOPs at "
            f"{_field('efficiency', efficiency)} of peak FLOP/s "
            f"({_field('efficiency_source', g['efficiency_source'])}) or its bytes at "
            f"{100 * costmodel.MEMORY_EFFICIENCY:.0f} % of the memory bandwidth, whichever "
            "takes longer; assumed "
            f"{1e6 * d['latency_s']:.0f} us per transfer; GPU figures from: "
            f'<span data-field="source">{html.escape(g["source"])}</span>.')
    extra = _measured_block(measured) if measured else ""
    i = _flat_index(ax, net=net, gpu=gpu, batch=batch, strategy=strategy, overlap=overlap,
                    n_gpus=n_gpus)
    text = (f"{net} on {n_gpus} x {gpu}, global batch {d['fields']['batch_size'][i]:,}, "
            f"{strategy}, overlap {'on' if overlap else 'off'}: "
            f"{d['fields']['images_per_s'][i]:,.0f} images/s (predicted)")
    spec = labcharts.throughput_spec(d, net, gpu, n_gpus, strategy, overlap, batch)
    return labcharts.Explorer(_page("throughput", controls, body, prov, d, extra), spec, text)
