"""Web explorers: controls that work in the static web book, with no kernel and no network.

When the book is built, each explorer asks the library for *every* setting its controls
can take (the memory model for chapter 7, the cost model for chapter 6) and returns one
HTML snippet: the controls, a ``<script type="application/json">`` holding all the
computed numbers, and a short script that looks the chosen setting up and redraws the
numbers and a Vega-Lite chart. Nothing is computed in the browser but look-ups (and the
global batch N x per-GPU limit, which is how :func:`~mgpu_lab.predict.memory.max_batch_size`
defines it). The charting JavaScript (Vega, Vega-Lite) is vendored in
``book/_static/vendor``; the book's Sphinx extension adds it to the pages that hold an
explorer (it finds them by the ``mgpu-explorer`` class).

    batch_limits()            chapter 7: GPU x image size x depth x optimizer (x N GPUs)
    throughput(measured=...)  chapter 6: network x GPU x N x strategy x overlap x batch
"""
import hashlib
import html
import json
import os
import time
from pathlib import Path

from IPython.display import HTML

from .. import models, presets
from ..measure.machine import machine_label
from ..predict import costmodel, gpus, memory
from . import tables

__all__ = ["OPTIMIZERS", "LIMIT_SIZES", "LIMIT_DEPTHS", "MEMORY_PARTS", "THROUGHPUT_NETS",
           "THROUGHPUT_BATCHES", "limits_grid", "memory_parts", "batch_limits_data",
           "batch_limits", "throughput_data", "throughput"]

OPTIMIZERS = tuple(memory.OPTIMIZER_SLOTS)
# The grid of chapter 7. Each network costs a graph build and three graph walks (1-6 s of
# CPU): 4 sizes x 4 depths took 50 s of CPU on the build machine (ResNet-200 and the
# sizes 96 and 160 would more than double it; the kernel widget still offers them).
LIMIT_SIZES = (32, 64, 128, 224)
LIMIT_DEPTHS = (26, 50, 101, 152)
MEMORY_PARTS = ("parameters", "gradients", "optimizer", "activations", "other")
# chapter 6: the book's ImageNet nets (presets.imagenet_model names) and batch choices
THROUGHPUT_NETS = {"ResNet-50-like": "resnet", "VGG-16-like": "vgg16"}
THROUGHPUT_BATCHES = (("per_gpu", 32), ("per_gpu", 64), ("per_gpu", 128),
                      ("global", 256), ("global", 1024))


# -- a cache on disk: the same library and grid give the same numbers ---------------------
_LIBRARY = Path(__file__).resolve().parents[1]


def _cache_path(kind, params):
    """``$MGPU_CACHE_DIR`` (default ``~/.cache/mgpu_lab``)/``<kind>-<sha256>.json``, the
    hash taken over the grid's parameters and every source file of the library."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in sorted(_LIBRARY.rglob("*.py")):
        h.update(str(path.relative_to(_LIBRARY)).encode() + b"\0" + path.read_bytes())
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
def _line(e1, e2, n):
    """Every term on the straight line through the estimates at 1 and 2 samples."""
    return {k: e1[k] + (n - 1) * (e2[k] - e1[k]) for k in e1}


def _with_optimizer(terms, optimizer):
    """``terms`` of an SGD estimate plus the optimizer state (the only term that differs)."""
    extra = memory.OPTIMIZER_SLOTS[optimizer] * terms["parameters"]
    return {**terms, "optimizer": extra, "total": terms["total"] + extra}


def limits_grid(model, kinds, optimizers=OPTIMIZERS, reserved=gpus.DEFAULT_RESERVED):
    """{(gpu name, optimizer): (largest split, estimate at it)} for one network, on each
    GPU's memory less ``reserved`` bytes (:func:`mgpu_lab.predict.gpus.usable_bytes`).

    Equal to :func:`memory.max_batch_size` and :func:`memory.estimate`, found with three
    graph walks instead of dozens: an estimate is the sum of buffer sizes that grow
    linearly with the split, or the largest such sum, so it is convex in n; if the
    estimate at ``top`` (past every answer) lies on the line through n = 1 and 2, it lies
    on that line for every n in between, and each answer is read off the line. If it does
    not, every answer is asked of ``max_batch_size`` itself.
    """
    e1, e2 = memory.estimate(model, 1), memory.estimate(model, 2)
    per_sample = e2["total"] - e1["total"]
    usable = {g.name: gpus.usable_bytes(g, reserved) for g in kinds}
    budget = {(g.name, o): usable[g.name] - memory.OPTIMIZER_SLOTS[o] * e1["parameters"]
              for g in kinds for o in optimizers}  # bytes left for an SGD step
    fit = {k: 0 if b < e1["total"] else 1 + (b - e1["total"]) // per_sample
           for k, b in budget.items()}
    top = max(fit.values()) + 1
    if _line(e1, e2, top) == memory.estimate(model, top):
        return {(g, o): (n, _with_optimizer(_line(e1, e2, max(n, 1)), o))
                for (g, o), n in fit.items()}
    out = {}
    for g in kinds:
        for o in optimizers:
            n = memory.max_batch_size(model, usable[g.name], optimizer=o)
            out[g.name, o] = (n, memory.estimate(model, max(n, 1), o))
    return out


def memory_parts(est):
    """The chart's five parts (bytes): 'other' = inputs + transient + workspace."""
    other = est["inputs"] + est["transient"] + est["workspace"]
    return [est["parameters"], est["gradients"], est["optimizer"], est["activations"], other]


def batch_limits_data(sizes=LIMIT_SIZES, depths=LIMIT_DEPTHS, kinds=None, cache=True):
    """Everything chapter 7's explorer shows: per-GPU limit and memory parts (bytes) for
    every GPU kind x image size x depth x optimizer, flattened in that order (kept on disk
    with ``cache``: see :func:`_cached`)."""
    kinds = list(kinds or gpus.gpu_names())
    args = (list(sizes), list(depths), kinds)
    if cache:
        return _cached("batch-limits", args, lambda: _limits_data(*args))
    return _limits_data(*args)


def _limits_data(sizes, depths, kinds):
    t0 = time.perf_counter()
    kinds = [gpus.get_gpu(g) for g in kinds]
    per_gpu, parts = [], []
    grids = {}
    for size in sizes:
        for depth in depths:
            grids[size, depth] = limits_grid(models.resnet_like(depth, image_size=size), kinds)
    for g in kinds:
        for size in sizes:
            for depth in depths:
                for o in OPTIMIZERS:
                    n, est = grids[size, depth][g.name, o]
                    per_gpu.append(int(n))
                    parts.append([int(v) for v in memory_parts(est)])
    return {"axes": {"gpu": [g.name for g in kinds], "image_size": list(sizes),
                     "depth": list(depths), "optimizer": list(OPTIMIZERS)},
            "gpus": {g.name: {"memory_bytes": g.memory_bytes, "source": g.source,
                              "usable_bytes": gpus.usable_bytes(g)} for g in kinds},
            "reserved_bytes": gpus.DEFAULT_RESERVED,
            "parts": list(MEMORY_PARTS), "per_gpu": per_gpu, "bytes": parts,
            "seconds": round(time.perf_counter() - t0, 1)}


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


def _throughput_data(nets, kinds, n_range, batches):
    t0 = time.perf_counter()
    kinds = [gpus.get_gpu(g) for g in kinds]
    fields = {f: [] for f in _PRED_FIELDS}
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


def _field(name, text=""):
    return f'<b data-field="{name}">{html.escape(str(text))}</b>'


def _page(kind, controls, body, provenance, data, script, after=""):
    """One explorer: a <div class="mgpu-explorer"> the extension and the tests find."""
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    style = ("border:1px solid #ccc;border-radius:6px;padding:0.8em 1em;margin:1em 0;"
             "font-size:0.95em")
    return (f'<div class="mgpu-explorer" data-explorer="{kind}" style="{style}">'
            f'<form class="mgpu-controls" style="display:flex;flex-wrap:wrap;gap:0.4em 1.2em;'
            f'margin-bottom:0.6em" onsubmit="return false">{controls}</form>{body}'
            f'<div class="mgpu-chart" style="overflow-x:auto"></div>'
            f'<p class="mgpu-provenance" style="font-size:0.8em;color:#555;margin:0.4em 0 0">'
            f"{provenance}</p>{after}"
            f'<script type="application/json" class="mgpu-data">{payload}</script>'
            f"<script>(function (root) {{if (!root) return;{_RUNTIME_JS}{script}{_REDRAW_JS}}})"
            f"(document.currentScript && document.currentScript.parentElement);</script></div>")


# Shared by both explorers (inside each one's own function, so a page may hold both; the
# explorer's ``update(m, s)`` goes between the two parts):
# look-ups in the flattened grid, number formats, the Vega view and the redraw timing
# that the browser tests read (root.mgpuRender: the promise of the latest redraw).
_RUNTIME_JS = r"""
  const data = JSON.parse(root.querySelector('script.mgpu-data').textContent);
  const axes = data.axes, order = Object.keys(axes);
  const form = root.querySelector('form');
  const chart = root.querySelector('.mgpu-chart');
  function sel() {  // {axis: value} of the controls (a select's value is an option index)
    const s = {};
    for (const el of form.elements) {
      if (!el.name) continue;
      s[el.name] = el.type === 'range' ? Number(el.value) : axes[el.name][Number(el.value)];
    }
    return s;
  }
  function at(s, over) {  // flat index of setting s (with some axes overridden)
    let i = 0;
    for (const a of order) {
      const v = over && a in over ? over[a] : s[a];
      const k = axes[a].indexOf(v);
      if (k < 0) throw new Error('no ' + a + ' = ' + v + ' in the explorer data');
      i = i * axes[a].length + k;
    }
    return i;
  }
  const fmt = {
    int: v => Math.round(v).toLocaleString('en-US'),
    f1: v => v.toLocaleString('en-US', {minimumFractionDigits: 1, maximumFractionDigits: 1}),
    f2: v => v.toFixed(2), pct: v => (100 * v).toFixed(1) + ' %',
    ms: v => v >= 1000 ? Math.round(v).toLocaleString('en-US') : v.toPrecision(4),
    gib: v => (v / 2 ** 30).toFixed(2), gib0: v => String(Number((v / 2 ** 30).toFixed(2))),
    text: v => String(v)};
  function show(name, value, how) {
    for (const el of root.querySelectorAll('[data-field="' + name + '"]')) {
      el.textContent = fmt[how || 'text'](value);
      el.dataset.value = String(value);
    }
  }
  let view = null;
  function draw(spec, datasets) {
    if (!window.vega || !window.vegaLite) {
      chart.textContent = '(the chart needs the web book: Vega was not loaded)';
      return Promise.resolve();
    }
    if (!view) {
      view = new vega.View(vega.parse(vegaLite.compile(spec).spec),
                           {renderer: 'svg', container: chart, hover: true});
    }
    for (const [name, rows] of Object.entries(datasets)) view.data(name, rows);
    return view.runAsync();
  }
  const m = {data, axes, sel, at, show, draw, form, renders: 0};
"""

_REDRAW_JS = r"""
  let last = null;
  function redraw() {
    const s = m.sel(), key = JSON.stringify(s);
    if (key === last) return root.mgpuRender;  // a select fires 'input' and 'change'
    last = key;
    const t0 = performance.now();
    const done = update(m, s).then(() => {
      m.renders += 1;
      root.dataset.renders = String(m.renders);
      root.dataset.redrawMs = (performance.now() - t0).toFixed(1);
    });
    root.mgpuRender = done;
    return done;
  }
  m.form.addEventListener('change', redraw);
  m.form.addEventListener('input', redraw);
  redraw();
"""


# -- chapter 7's explorer -----------------------------------------------------------------
_LIMITS_JS = r"""
  const PARTS = m.data.parts;
  const SPEC = {
    width: 540, height: 46, padding: {left: 5, right: 20, top: 5, bottom: 5},
    title: {text: "Where one GPU's memory goes at its largest split (predicted)"},
    layer: [
      {data: {name: 'table'}, mark: 'bar',
       encoding: {
         x: {field: 'gib', type: 'quantitative', stack: 'zero',
             title: "memory of one GPU (GiB)"},
         color: {field: 'part', type: 'nominal', scale: {domain: PARTS},
                 legend: {orient: 'bottom', title: null}},
         order: {field: 'order'},
         tooltip: [{field: 'part'}, {field: 'gib', format: '.3f', title: 'GiB'}]}},
      {data: {name: 'cap'}, mark: {type: 'rule', color: 'black', strokeDash: [4, 3],
                                   strokeWidth: 2},
       encoding: {x: {field: 'gib', type: 'quantitative'}}},
      {data: {name: 'cap'}, mark: {type: 'text', align: 'right', dx: -4, baseline: 'bottom'},
       encoding: {x: {field: 'gib', type: 'quantitative'}, y: {value: -2},
                  text: {field: 'label'}}}]};
  function update(m, s) {
    const i = m.at(s), per = m.data.per_gpu[i], bytes = m.data.bytes[i];
    const gpu = m.data.gpus[s.gpu];
    for (const a of ['gpu', 'image_size', 'depth', 'optimizer', 'n_gpus']) m.show(a, s[a]);
    m.show('gpu_gib', gpu.memory_bytes, 'gib0');
    m.show('per_gpu', per, 'int');
    m.show('global_batch', s.n_gpus * per, 'int');  // max_batch_size(n_devices=N)
    m.show('source', gpu.source);
    m.show('none_fits', per ? '' : ' Not even one image fits: the bar shows one image.');
    const rows = PARTS.map((p, k) => ({part: p, gib: bytes[k] / 2 ** 30, order: k}));
    PARTS.forEach((p, k) => m.show('bytes_' + p, bytes[k], 'gib'));
    m.show('bytes_total', bytes.reduce((a, b) => a + b, 0), 'gib');
    return m.draw(SPEC, {table: rows,
                         cap: [{gib: gpu.usable_bytes / 2 ** 30, label: s.gpu + ' memory less the reserve'}]});
  }
"""


def batch_limits(gpu="V100", image_size=224, depth=50, n_gpus=4, optimizer="momentum",
                 data=None):
    """Chapter 7's explorer (an ``IPython.display.HTML``): the predicted largest batch per
    GPU and for N GPUs, and one GPU's memory at it, for every setting of its controls."""
    d = data or batch_limits_data()
    ax = d["axes"]
    controls = (_select("gpu", "GPU", ax["gpu"], gpu)
                + _select("image_size", "image px", ax["image_size"], image_size)
                + _select("depth", "depth", ax["depth"], depth)
                + _slider("n_gpus", "GPUs", 1, 8, n_gpus)
                + _select("optimizer", "optimizer", ax["optimizer"], optimizer))
    parts = ", ".join(f"{p} {_field('bytes_' + p)}" for p in d["parts"])
    body = (f'<p class="mgpu-summary">ResNet-{_field("depth", depth)}-like at '
            f'{_field("image_size", image_size)} px on {_field("n_gpus", n_gpus)} x '
            f'{_field("gpu", gpu)} ({_field("gpu_gib")} GiB each), optimizer '
            f'{_field("optimizer", optimizer)}: at most {_field("per_gpu")} images per GPU, '
            f'a global batch of {_field("global_batch")} (predicted).'
            f'{_field("none_fits")}</p><p style="font-size:0.85em">One GPU at that split, '
            f'GiB: {parts}; total {_field("bytes_total")}.</p>')
    sizes = " x ".join(str(len(v)) for v in ax.values())
    prov = ("predicted by mgpu_lab.predict.memory from each network's graph "
            "(mgpu_lab.models.resnet_like); GPU figures from: "
            f'<span data-field="source">{html.escape(d["gpus"][gpu]["source"])}</span>. '
            f"All {sizes} settings (GPU x image size x depth x optimizer) were computed "
            "when the book was built; N GPUs hold N times one GPU's split. All of each "
            f"GPU's memory less {d['reserved_bytes'] // 2 ** 20} MiB reserved for the CUDA "
            "context and the framework (an assumption: mgpu_lab.predict.gpus.DEFAULT_RESERVED), "
            "as in memory.max_batch_size(model, gpus.usable_bytes(gpu), optimizer=...); the "
            "book trains with momentum.")
    return HTML(_page("batch-limits", controls, body, prov, d, _LIMITS_JS))


# -- chapter 6's explorer -----------------------------------------------------------------
_THROUGHPUT_JS = r"""
  const F = m.data.fields, NS = m.axes.n_gpus;
  const xN = {field: 'n', type: 'ordinal', title: 'number of GPUs', axis: {labelAngle: 0}};
  const SPEC = {
    resolve: {scale: {color: 'independent'}, legend: {color: 'independent'}},
    hconcat: [
      {width: 250, height: 190, title: 'Predicted images/s',
       layer: [
         {data: {name: 'curve'}, mark: {type: 'line', point: true},
          encoding: {x: xN, y: {field: 'images_per_s', type: 'quantitative',
                                title: 'images per second'},
                     color: {field: 'strategy', type: 'nominal',
                             legend: {orient: 'bottom', title: null}},
                     tooltip: [{field: 'strategy'}, {field: 'n', title: 'GPUs'},
                               {field: 'images_per_s', format: ',.0f'}]}},
         {data: {name: 'here'}, mark: {type: 'point', size: 160, shape: 'circle',
                                       filled: false, color: 'black', strokeWidth: 2},
          encoding: {x: xN, y: {field: 'images_per_s', type: 'quantitative'}}}]},
      {width: 250, height: 190, title: 'Predicted time per step',
       data: {name: 'split'}, mark: 'bar',
       encoding: {x: xN, y: {field: 'ms', type: 'quantitative', stack: 'zero',
                             title: 'milliseconds per step'},
                  color: {field: 'part', type: 'nominal', scale: {domain:
                          ['compute', 'communication'], range: ['#4c78a8', '#f58518']},
                          legend: {orient: 'bottom', title: null}},
                  opacity: {condition: {test: 'datum.here', value: 1}, value: 0.55},
                  tooltip: [{field: 'part'}, {field: 'n', title: 'GPUs'},
                            {field: 'ms', format: '.2f'}]}}]};
  function update(m, s) {
    const i = m.at(s);
    for (const f of ['images_per_s', 'batch_size', 'split']) m.show(f, F[f][i], 'int');
    m.show('speedup', F.speedup[i], 'f2');
    m.show('scaling_efficiency', F.scaling_efficiency[i], 'pct');
    for (const f of ['compute_s', 'comm_s', 'step_s']) m.show(f, 1e3 * F[f][i], 'ms');
    for (const a of ['net', 'gpu', 'strategy', 'n_gpus']) m.show(a, s[a]);
    m.show('overlap', s.overlap ? 'on' : 'off');
    const g = m.data.gpus[s.gpu];
    m.show('source', g.source);
    m.show('efficiency', g.efficiency, 'pct');
    m.show('efficiency_source', g.efficiency_source);
    const curve = [], split = [];
    for (const strategy of m.axes.strategy) for (const n of NS) {
      curve.push({n, strategy, images_per_s: F.images_per_s[m.at(s, {strategy, n_gpus: n})]});
    }
    for (const n of NS) {
      const k = m.at(s, {n_gpus: n}), here = n === s.n_gpus;
      split.push({n, part: 'compute', ms: 1e3 * F.compute_s[k], here});
      split.push({n, part: 'communication', ms: 1e3 * F.comm_s[k], here});
    }
    return m.draw(SPEC, {curve, split, here: [{n: s.n_gpus, images_per_s: F.images_per_s[i]}]});
  }
"""


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
    """Chapter 6's explorer (an ``IPython.display.HTML``): predicted images/s, speed-up,
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
            "; with overlap the step is the longer of the two.</p>")
    g = d["gpus"][gpu]
    efficiency = f"{100 * g['efficiency']:.1f} %"
    prov = ("predicted by mgpu_lab.predict.costmodel: FLOPs from each network's graph, "
            f"sustained {_field('efficiency', efficiency)} of peak FLOP/s "
            f"({_field('efficiency_source', g['efficiency_source'])}), assumed "
            f"{1e6 * d['latency_s']:.0f} us per transfer; GPU figures from: "
            f'<span data-field="source">{html.escape(g["source"])}</span>.')
    extra = _measured_block(measured) if measured else ""
    return HTML(_page("throughput", controls, body, prov, d, _THROUGHPUT_JS, extra))
