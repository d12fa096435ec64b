"""The explorers in JupyterLab: the same numbers as the web book, drawn by the lab itself.

The web book draws an explorer with its own scripts (``book/_static/explorer-*.js`` on the
vendored Vega). JupyterLab does not run those, but it renders Vega-Lite 5 natively (its
built-in ``@jupyterlab/vega5-extension`` takes ``application/vnd.vegalite.v5+json``, with
no network and nothing to install). So in a kernel an explorer is a Vega-Lite chart of
the same grid (:func:`~mgpu_lab.figures.explorers.batch_limits_data`,
:func:`~mgpu_lab.figures.explorers.throughput_data`) whose controls are Vega-Lite
parameters bound to inputs; a summary line in the chart prints the numbers the web book
prints in its text.

The lab chart offers the web page's controls. Chapter 7's has all eight (GPU, image size,
depth, GPUs, optimizer, sharding, precision, recomputation): its data is one datum, the
factored grid itself (0.7 MB), and Vega expressions look the chosen setting up in it as
the page's script does (a row per setting would be some 15 MB of JSON). Chapter 6's has a
row per network x GPU x batch x strategy x overlap x N.

Which one a notebook shows: JupyterLab prefers HTML (rank 50) to Vega (rank 57) when an
output holds both, so an output holds one. The book's Sphinx extension sets
``MGPU_WEB_BOOK=1`` for the kernels it runs (:data:`WEB_BOOK_ENV`); there an explorer is
its HTML, everywhere else its Vega-Lite chart (and a plain-text summary for terminals).
"""
import json
import os

__all__ = ["WEB_BOOK_ENV", "VEGALITE_MIME", "STEP_PARTS", "Explorer", "batch_limits_spec",
           "throughput_spec"]

WEB_BOOK_ENV = "MGPU_WEB_BOOK"
VEGALITE_MIME = "application/vnd.vegalite.v5+json"
# vega-embed's options (JupyterLab passes them on): SVG, so the text can be read and
# selected; no action menu (its "open in editor" would go to the network)
EMBED_OPTIONS = {"renderer": "svg", "actions": False}
# The parts of chapter 6's step bar (book/_static/explorer-throughput.js names them alike):
# compute, the communication that adds to the step, the communication overlap hides
STEP_PARTS = ("compute", "communication", "communication hidden by overlap")
_STEP_COLOURS = ("#4c78a8", "#f58518", "#fdd9b5")


class Explorer:
    """One explorer's output: ``html`` in the web book, ``spec`` (Vega-Lite) in a kernel."""

    def __init__(self, html, spec, text):
        self.html, self.spec, self.text = html, spec, text

    @property
    def data(self):  # as IPython.display.HTML's, which explorers returned before
        return self.html

    def _repr_mimebundle_(self, include=None, exclude=None):
        if os.environ.get(WEB_BOOK_ENV):
            return {"text/html": self.html, "text/plain": self.text}
        return ({VEGALITE_MIME: self.spec, "text/plain": self.text},
                {VEGALITE_MIME: {"embed_options": EMBED_OPTIONS}})


def _param(name, label, value, options=None, lo=None, hi=None, labels=None):
    """A parameter bound to a select (``options``) or a range slider (``lo``..``hi``)."""
    if options is None:
        bind = {"input": "range", "min": lo, "max": hi, "step": 1, "name": f"{label} "}
    else:
        bind = {"input": "select", "options": list(options), "name": f"{label} "}
        if labels:
            bind["labels"] = list(labels)
    return {"name": name, "value": value, "bind": bind}


def _filter(names):
    return {"filter": " && ".join(f"datum.{n} == {n}" for n in names)}


def _summary(expr, width, before=()):
    """A line of text computed from the chosen setting (the one row left by the filters
    and ``before``, more transforms)."""
    return {"width": width, "height": 36,
            "transform": [*before, {"calculate": expr, "as": "summary"}],
            "mark": {"type": "text", "align": "left", "baseline": "middle", "x": 0,
                     "fontSize": 13, "lineBreak": "\n"},
            "encoding": {"text": {"field": "summary"}}}


# -- chapter 7 ---------------------------------------------------------------------------
def _index_expr(axes):
    """A Vega expression for where the setting the parameters hold sits in a grid
    flattened in ``axes`` order (as explorers._flat_index computes it): each axis's
    ``indexof``, by Horner's rule. Each axis must be a parameter of the same name."""
    expr = None
    for name, values in axes.items():
        at = f"indexof({json.dumps(list(values))}, {name})"
        expr = at if expr is None else f"({expr}) * {len(values)} + {at}"
    return expr


def _label_expr(values, labels, name):
    """A Vega expression for the label of parameter ``name``'s value."""
    return f"{json.dumps(list(labels))}[indexof({json.dumps(list(values))}, {name})]"


def _limits_lookup(d):
    """One datum holding the factored grid ``d`` (per_gpu, state, step: see
    explorers._limits_data) and the transforms that look the chosen setting up in it, as
    explorers.limits_parts and the web page do: ``per`` (the per-GPU limit), ``usable_gib``
    and a field ``p_<part>`` (GiB) for each memory part. (A row per setting would be 16
    times the rows of one sharding, precision and recomputation, some 15 MB of JSON.)"""
    ax, n_axis = d["axes"], json.dumps(d["axes"]["n_gpus"])
    datum = {"per_gpu": d["per_gpu"], "state": d["state"], "step": d["step"],
             "usable": {g: v["usable_bytes"] for g, v in d["gpus"].items()}}
    how = "precision + (recompute ? '+recompute' : '')"  # explorers.how_key
    lookup = [
        {"calculate": f"datum.per_gpu[{_index_expr(ax)}]", "as": "per"},
        {"calculate": "image_size + 'x' + depth", "as": "grid_key"},
        # state[size x depth][precision][optimizer][stage][N - 1]: parameters, gradients,
        # optimizer; step[size x depth][how][split]: activations, other
        {"calculate": "datum.state[datum.grid_key][precision][optimizer][sharding]"
                      f"[indexof({n_axis}, n_gpus)]", "as": "state_bytes"},
        {"calculate": f"datum.step[datum.grid_key][{how}][toString(max(datum.per, 1))]",
         "as": "step_bytes"},
        {"calculate": f"datum.usable[gpu] / {2 ** 30}", "as": "usable_gib"}]
    for k, p in enumerate(d["parts"]):  # "p_": a part may share its name with a setting
        field = f"datum.state_bytes[{k}]" if k < 3 else f"datum.step_bytes[{k - 3}]"
        lookup.append({"calculate": f"{field} / {2 ** 30}", "as": f"p_{p}"})
    return [datum], lookup


def batch_limits_spec(d, gpu, image_size, depth, n_gpus, optimizer, sharding=0,
                      precision="fp32", recompute=False):
    """Chapter 7's explorer as Vega-Lite: the summary line and the busiest GPU's memory
    bar, with all eight controls of the web page (GPU, image size, depth, GPUs, optimizer,
    sharding, precision, recomputation), starting at the setting given."""
    ax, parts = d["axes"], list(d["parts"])
    labels = {a: _label_expr(ax[a], d[f"{a}_labels"], a)
              for a in ("sharding", "precision", "recompute")}
    summary = ("'ResNet-' + depth + '-like at ' + image_size + ' px on ' + n_gpus + ' x ' "
               f"+ gpu + ', ' + optimizer + ', sharding ' + {labels['sharding']} + ', ' "
               f"+ {labels['precision']} + ', recomputation ' + {labels['recompute']} "
               "+ ':\\nat most ' + format(datum.per, ',') "
               "+ ' images per GPU, a global batch of ' + format(n_gpus * datum.per, ',')"
               " + ' (predicted)'")
    bar = {"transform": [{"fold": [f"p_{p}" for p in parts], "as": ["key", "gib"]},
                         {"calculate": "slice(datum.key, 2)", "as": "part"},
                         {"calculate": f"indexof({parts!r}, datum.part)", "as": "order"}],
           "mark": "bar",
           "encoding": {"x": {"field": "gib", "type": "quantitative", "stack": "zero",
                              "title": "memory of one GPU (GiB)"},
                        "color": {"field": "part", "type": "nominal",
                                  "scale": {"domain": parts},
                                  "legend": {"orient": "bottom", "title": None}},
                        "order": {"field": "order"},
                        "tooltip": [{"field": "part"},
                                    {"field": "gib", "format": ".3f", "title": "GiB"}]}}
    cap = {"mark": {"type": "rule", "color": "black", "strokeDash": [4, 3], "strokeWidth": 2},
           "encoding": {"x": {"field": "usable_gib", "type": "quantitative"}}}
    values, lookup = _limits_lookup(d)
    return {
        "params": [_param("gpu", "GPU", gpu, ax["gpu"]),
                   _param("image_size", "image px", image_size, ax["image_size"]),
                   _param("depth", "depth", depth, ax["depth"]),
                   _param("n_gpus", "GPUs", n_gpus, lo=min(ax["n_gpus"]),
                          hi=max(ax["n_gpus"])),
                   _param("optimizer", "optimizer", optimizer, ax["optimizer"]),
                   _param("sharding", "sharding", sharding, ax["sharding"],
                          labels=d["sharding_labels"]),
                   _param("precision", "precision", precision, ax["precision"],
                          labels=d["precision_labels"]),
                   _param("recompute", "recomputation", recompute, ax["recompute"],
                          labels=d["recompute_labels"])],
        "data": {"values": values},
        "transform": lookup,
        "vconcat": [_summary(summary, 560),
                    {"width": 540, "height": 46, "layer": [bar, cap],
                     "title": "Where the busiest GPU's memory goes at its largest split (predicted; "
                              "dashed: the GPU's memory less the reserve)"}]}


# -- chapter 6 ---------------------------------------------------------------------------
def _throughput_rows(d):
    ax, f, rows, i = d["axes"], d["fields"], [], 0
    for net in ax["net"]:
        for gpu in ax["gpu"]:
            for batch in ax["batch"]:
                for strategy in ax["strategy"]:
                    for overlap in ax["overlap"]:
                        for n in ax["n_gpus"]:
                            rows.append({"net": net, "gpu": gpu, "batch": batch,
                                         "strategy": strategy, "overlap": "on" if overlap
                                         else "off", "n": n,
                                         **{k: f[k][i] for k in f},
                                         "compute_ms": 1e3 * f["compute_s"][i],
                                         "comm_ms": 1e3 * f["comm_s"][i],
                                         "step_ms": 1e3 * f["step_s"][i],
                                         "hidden_ms": 1e3 * f["hidden_s"][i]})
                            i += 1
    return rows


def throughput_spec(d, net, gpu, n_gpus, strategy, overlap, batch):
    """Chapter 6's explorer as Vega-Lite: the summary line, images/s against N for both
    strategies, and the predicted step: a bar as tall as ``step_s``, compute from 0, then
    the communication that adds to the step, with the communication hidden by overlap
    drawn lighter and dashed over the top of the compute it ran under."""
    ax = d["axes"]
    x = {"field": "n", "type": "ordinal", "title": "number of GPUs", "axis": {"labelAngle": 0}}
    summary = ("net + ' on ' + n_gpus + ' x ' + gpu + ', global batch ' "
               "+ format(datum.batch_size, ',') + ', ' + strategy + ', overlap ' + overlap "
               "+ ':\\n' + format(datum.images_per_s, ',.0f') + ' images/s, speed-up ' "
               "+ format(datum.speedup, '.2f') + ', efficiency ' "
               "+ format(100 * datum.scaling_efficiency, '.1f') + ' %; one step ' "
               "+ format(datum.step_ms, '.1f') + ' ms, ' + format(datum.hidden_ms, '.1f') "
               "+ ' ms of its communication hidden by overlap (predicted)'")
    curve = {"width": 250, "height": 190, "title": "Predicted images/s", "layer": [
        {"mark": {"type": "line", "point": True},
         "encoding": {"x": x, "y": {"field": "images_per_s", "type": "quantitative",
                                    "title": "images per second"},
                      "color": {"field": "strategy", "type": "nominal",
                                "legend": {"orient": "bottom", "title": None}}}},
        {"transform": [_filter(["strategy"]), {"filter": "datum.n == n_gpus"}],
         "mark": {"type": "point", "size": 160, "filled": False, "color": "black",
                  "strokeWidth": 2},
         "encoding": {"x": x, "y": {"field": "images_per_s", "type": "quantitative"}}}]}
    def part(name, lo, hi, mark="bar", keep=None):
        return {**({"transform": [{"filter": keep}]} if keep else {}), "mark": mark,
                "encoding": {"x": x, "y": {"field": lo, "type": "quantitative",
                                           "title": "milliseconds per step"},
                             "y2": {"field": hi},
                             "color": {"datum": name, "type": "nominal",
                                       "scale": {"domain": list(STEP_PARTS),
                                                 "range": list(_STEP_COLOURS)},
                                       "legend": {"orient": "bottom", "title": None,
                                                  "columns": 1, "symbolStrokeWidth": 0}}}}
    split = {"width": 250, "height": 190, "title": "Predicted time per step",
             "transform": [_filter(["strategy"]), {"calculate": "0", "as": "zero"},
                           {"calculate": "datum.compute_ms - datum.hidden_ms",
                            "as": "hidden_from"}],
             "layer": [part(STEP_PARTS[0], "zero", "compute_ms"),
                       part(STEP_PARTS[1], "compute_ms", "step_ms"),  # the bar's top: step_s
                       part(STEP_PARTS[2], "hidden_from", "compute_ms",
                            {"type": "bar", "stroke": _STEP_COLOURS[1], "strokeDash": [3, 2],
                             "strokeWidth": 1}, "datum.hidden_ms > 0")]}
    return {
        "params": [_param("net", "network", net, ax["net"]),
                   _param("gpu", "GPU", gpu, ax["gpu"]),
                   _param("n_gpus", "GPUs", n_gpus, lo=min(ax["n_gpus"]), hi=max(ax["n_gpus"])),
                   _param("strategy", "strategy", strategy, ax["strategy"],
                          labels=["host gather", "ring all-reduce"]),
                   _param("overlap", "overlap", "on" if overlap else "off", ["off", "on"]),
                   _param("batch", "batch", batch, ax["batch"])],
        "data": {"values": _throughput_rows(d)},
        "transform": [_filter(["net", "gpu", "batch", "overlap"])],
        "vconcat": [_summary(summary, 560, before=[_filter(["strategy"]),
                                                   {"filter": "datum.n == n_gpus"}]),
                    {"hconcat": [curve, split],
                     "resolve": {"scale": {"color": "independent"}}}]}
