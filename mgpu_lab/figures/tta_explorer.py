"""Chapter 13's web explorer: predicted time to accuracy against the number of GPUs.

For every workload x GPU x strategy x split x N the library computes, when the book is
built, a :class:`~mgpu_lab.predict.time_to_accuracy.Plan` (steps from the workload's
trade-off times the cost model's step) and the three limits on the split (memory b_mem,
communication b*, statistics B_crit / N). The page's script
(``book/_static/explorer-time-to-accuracy.js``, on ``mgpu-explorer.js``) only looks them
up and draws two charts: time to target against N, with the N where the batch reaches
B_crit and where the step turns communication-bound marked; and the three limits on the
split against N. In JupyterLab the same numbers are a Vega-Lite chart (:func:`tta_spec`).

    tta_data(workloads)   the grid (cached on disk like the other explorers')
    time_to_accuracy()    the explorer (an Explorer: HTML in the web book, Vega-Lite in a kernel)
"""
import html
import time

from ..predict import gpus
from ..predict import time_to_accuracy as tta
from . import labcharts
from .explorers import _cached, _field, _flat_index, _page, _select

__all__ = ["TTA_GPUS", "TTA_N", "TTA_SPLITS", "BEST", "STRATEGY_LABELS", "default_workloads",
           "book_workloads",
           "workload_key", "gpu_labels", "tta_data", "grid_rows", "tta_spec", "time_to_accuracy"]

TTA_GPUS = gpus.BOOK_GPUS
TTA_N = tuple(2 ** k for k in range(11))  # 1 .. 1024 GPUs
BEST = "best that fits"  # per N, the split with the shortest time among TTA_SPLITS and b_mem
TTA_SPLITS = (BEST, 16, 32, 64, 128, 256)
STRATEGY_LABELS = {"host": "host gather (one node's links)",
                   "ring": "ring all-reduce (one fabric for all N)",
                   "hierarchical": f"hierarchical, {tta.GPUS_PER_NODE} per node, "
                                   f"{tta.NETWORK}"}
_FIELDS = ("seconds", "steps", "step_s", "comm_s", "b", "batch")
_ATTR = {"b": "batch_per_gpu"}  # field -> Plan attribute


def default_workloads():
    """The ImageNet ResNet-50 workload at each B_crit of :data:`IMAGENET_B_CRITS` (assumed)."""
    return [tta.imagenet_resnet50(b) for b in tta.IMAGENET_B_CRITS]


def book_workloads(sweep=None):
    """The chapter's workloads: :func:`default_workloads` and, given the critical sweep's
    result ``sweep``, the digits network with its measured trade-off
    (:func:`~mgpu_lab.predict.time_to_accuracy.measured_workload`)."""
    return default_workloads() + ([tta.measured_workload(sweep)] if sweep else [])


def workload_key(work):
    """The workload's value on the explorer's axis: its name and B_crit."""
    return f"{work.name}, B_crit {work.b_crit:,.0f}"


def _g(v):
    return None if v is None else float(f"{v:.4g}")


def _per_n(work, gpu, strategy, split, n, b_mem):
    """The plan (or None) of one setting: a fixed split, or the best of the candidates."""
    if split == BEST:
        cands = sorted({b for b in TTA_SPLITS[1:] if b <= b_mem} | {b_mem})
    else:
        cands = [split] if split <= b_mem else []
    cands = [b for b in cands if b >= 1 and (work.max_batch is None or n * b <= work.max_batch)]
    if not cands:
        return None
    return min((tta.time_to_target(work, gpu, n, b, strategy) for b in cands),
               key=lambda p: p.seconds)


def _markers(work, plans, bstar):
    """{stat, comm, best}: the first N whose batch reaches B_crit, the first N whose b*
    exceeds its split (the step is communication-bound), and the N with the shortest
    time; None where no N of the grid does."""
    ok = [(n, p, s) for n, p, s in zip(TTA_N, plans, bstar) if p is not None]
    return {"stat": next((n for n, p, _ in ok if p.batch >= work.b_crit), None),
            "comm": next((n for n, p, s in ok if s > p.batch_per_gpu), None),
            "best": min(ok, key=lambda t: t[1].seconds)[0] if ok else None}


def _tta_data(workloads):
    t0 = time.perf_counter()
    fields = {f: [] for f in _FIELDS}
    bstars, b_mems, marks = {}, {}, {}
    for w in workloads:
        key = workload_key(w)
        for g in TTA_GPUS:
            b_mem = b_mems[f"{key}|{g}"] = tta.memory_limit(w.model, g)
            for s in tta.STRATEGIES:
                bstar = [tta.communication_limit(w.model, g, n, s) for n in TTA_N]
                bstars[f"{key}|{g}|{s}"] = [_g(v) for v in bstar]
                for split in TTA_SPLITS:
                    plans = [_per_n(w, g, s, split, n, b_mem) for n in TTA_N]
                    marks[f"{key}|{g}|{s}|{split}"] = _markers(w, plans, bstar)
                    for p in plans:
                        for f in _FIELDS:
                            v = None if p is None else getattr(p, _ATTR.get(f, f))
                            fields[f].append(v if f in ("b", "batch") else _g(v))
    return {"axes": {"workload": [workload_key(w) for w in workloads], "gpu": list(TTA_GPUS),
                     "strategy": list(tta.STRATEGIES), "split": list(TTA_SPLITS),
                     "n_gpus": list(TTA_N)},
            "workloads": {workload_key(w): {"name": w.name, "label": w.label, "b_crit": w.b_crit,
                                            "s_min": w.fit.s_min, "e_min": w.fit.e_min,
                                            "max_batch": w.max_batch}
                          for w in workloads},
            "strategy_labels": [STRATEGY_LABELS[s] for s in tta.STRATEGIES],
            "gpus": {g: gpu_labels(g) for g in TTA_GPUS}, "fields": fields,
            "b_star": bstars, "b_mem": b_mems, "marks": marks,
            "b_crit_share": {workload_key(w): [_g(w.b_crit / n) for n in TTA_N]
                             for w in workloads},
            "seconds": round(time.perf_counter() - t0, 1)}


def gpu_labels(gpu):
    """The GPU's datasheet source and the cost model's efficiency label."""
    from ..predict.costmodel import calibration_for
    g = gpus.get_gpu(gpu)
    return {"source": g.source, "efficiency_source": calibration_for(g)["label"]}


def tta_data(workloads=None, cache=True):
    """Everything the explorer shows, for ``workloads`` (default
    :func:`default_workloads`): fields flattened over workload x GPU x strategy x split x
    N (floats to 4 significant digits, None where the split does not fit or the batch
    exceeds the workload's), b* per N, b_mem per GPU, and the marked N."""
    workloads = list(workloads or default_workloads())
    key = [[w.name, w.label, list(w.fit), w.max_batch, str(getattr(w.model, "spec", ""))]
           for w in workloads]
    if cache:
        return _cached("time-to-accuracy", key, lambda: _tta_data(workloads))
    return _tta_data(workloads)


def grid_rows(d, workload, gpu, strategy, split=BEST):
    """The grid's plans at one setting, one dict per N whose split fits: ``n_gpus``,
    ``seconds``, ``steps``, ``step_s``, ``comm_s``, ``b``, ``batch``, and the three limits
    at that N, ``memory``, ``communication`` (b*), ``statistics`` (B_crit / N)."""
    out = []
    for k, n in enumerate(d["axes"]["n_gpus"]):
        i = _flat_index(d["axes"], workload=workload, gpu=gpu, strategy=strategy, split=split,
                        n_gpus=n)
        if d["fields"]["seconds"][i] is None:
            continue
        out.append({"n_gpus": n, **{f: d["fields"][f][i] for f in _FIELDS},
                    "memory": d["b_mem"][f"{workload}|{gpu}"],
                    "communication": d["b_star"][f"{workload}|{gpu}|{strategy}"][k],
                    "statistics": d["b_crit_share"][workload][k]})
    return out


def _summary_text(d, setting):
    i = _flat_index(d["axes"], **setting)
    f = d["fields"]
    if f["seconds"][i] is None:
        return "no split of that size fits (or the batch exceeds the workload's data)"
    return (f"{setting['n_gpus']} x {setting['gpu']}, {f['b'][i]} per GPU (batch "
            f"{f['batch'][i]:,}): {f['steps'][i]:,.0f} steps of {1e3 * f['step_s'][i]:.4g} ms, "
            f"{f['seconds'][i] / 3600:.3g} h to the target (predicted)")


def time_to_accuracy(workload=None, gpu="V100", strategy="ring", split=BEST, n_gpus=64,
                     data=None):
    """Chapter 13's explorer (a :class:`~.labcharts.Explorer`): predicted time to target
    against N for every setting of its controls, and the three limits on the split."""
    d = data or tta_data()
    ax = d["axes"]
    workload = workload or ax["workload"][0]
    controls = (_select("workload", "workload", ax["workload"], workload)
                + _select("gpu", "GPU", ax["gpu"], gpu)
                + _select("strategy", "strategy", ax["strategy"], strategy, d["strategy_labels"])
                + _select("split", "samples per GPU", ax["split"], split)
                + _select("n_gpus", "GPUs", ax["n_gpus"], n_gpus))
    f = _field
    body = (f'<p class="mgpu-summary">{f("n_gpus", n_gpus)} x {f("gpu", gpu)}, '
            f'{f("b")} samples per GPU (batch {f("batch")}), {f("strategy", strategy)}: '
            f'{f("steps")} steps of {f("step_ms")} ms ({f("comm_ms")} ms of it communication): '
            f'{f("time")} to the target (predicted).{f("none_fits")} '
            f'Shortest over N: {f("best_time")} on {f("best_n")} GPUs. '
            f'Limits at this N, samples per GPU: memory {f("b_mem")}, communication '
            f'b* {f("b_star")}, statistics B_crit / N {f("share")}.</p>')
    prov = ("predicted: steps from McCandlish et al.'s trade-off S(B) = S_min (1 + B_crit / B) "
            f'(<span data-field="steps_label">{html.escape(d["workloads"][workload]["label"])}</span>), times the step '
            "of mgpu_lab.predict.costmodel (host, ring) or network.predict_cluster "
            "(hierarchical), no overlap, at each GPU's efficiency "
            f'(<span data-field="efficiency_source">'
            f'{html.escape(d["gpus"][gpu]["efficiency_source"])}</span>); memory limit from '
            "mgpu_lab.predict.memory (momentum, the GPU's memory less the reserve); GPU figures "
            f'from: <span data-field="source">{html.escape(d["gpus"][gpu]["source"])}</span>. '
            "All settings were computed when the book was built "
            "(mgpu_lab.predict.time_to_accuracy).")
    setting = dict(workload=workload, gpu=gpu, strategy=strategy, split=split, n_gpus=n_gpus)
    return labcharts.Explorer(_page("time-to-accuracy", controls, body, prov, d),
                              tta_spec(d, **setting), _summary_text(d, setting))


def _lab_rows(d):
    """One row per setting (the lab chart filters them with its parameters)."""
    ax, f, rows, i = d["axes"], d["fields"], [], 0
    for w in ax["workload"]:
        for g in ax["gpu"]:
            for s in ax["strategy"]:
                for split in ax["split"]:
                    for n in ax["n_gpus"]:
                        if f["seconds"][i] is not None:
                            rows.append({"workload": w, "gpu": g, "strategy": s,
                                         "split": str(split), "n": n,
                                         "hours": f["seconds"][i] / 3600, "b": f["b"][i],
                                         "batch": f["batch"][i]})
                        i += 1
    return rows


def tta_spec(d, workload, gpu, strategy, split, n_gpus):
    """The explorer as Vega-Lite for JupyterLab: time to target against N for the chosen
    workload, GPU, strategy and split (the limits' chart is the web book's)."""
    ax = d["axes"]
    x = {"field": "n", "type": "quantitative", "scale": {"type": "log", "base": 2},
         "title": "number of GPUs N"}
    return {
        "params": [labcharts._param("workload", "workload", workload, ax["workload"]),
                   labcharts._param("gpu", "GPU", gpu, ax["gpu"]),
                   labcharts._param("strategy", "strategy", strategy, ax["strategy"]),
                   labcharts._param("split", "samples per GPU", str(split),
                                    [str(v) for v in ax["split"]])],
        "data": {"values": _lab_rows(d)},
        "transform": [labcharts._filter(["workload", "gpu", "strategy", "split"])],
        "width": 480, "height": 260,
        "title": "Time to target against N (predicted: trade-off x cost model)",
        "mark": {"type": "line", "point": True},
        "encoding": {"x": x, "y": {"field": "hours", "type": "quantitative",
                                   "scale": {"type": "log"}, "title": "time to target (hours)"},
                     "tooltip": [{"field": "n", "title": "GPUs"}, {"field": "b", "title": "per GPU"},
                                 {"field": "batch"}, {"field": "hours", "format": ".3g"}]}}
