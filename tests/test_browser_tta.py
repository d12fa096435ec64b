"""Chapter 13's explorer (``mgpu_lab.figures.tta_explorer``) in Chromium.

What the reader sees after changing a control must be what the library predicts for that
setting: the steps, the step time, the time to target, the memory limit, b* and B_crit / N,
and the N the charts mark (where the batch reaches B_crit, where the step turns
communication-bound, where the time is shortest).

Two ways: on a page of its own (the explorer's HTML with the vendored Vega and the
explorer's scripts, no book build: ``browser`` only), and in the built book (``browser``
and ``book``: the page as the reader gets it, offline, with a screenshot to
``_build/screenshots/explorer-13.png``). Without Chromium both skip (tests/browserkit.py).
"""
import math
from pathlib import Path

import pytest

from bookbuild import ROOT, built_book  # noqa: F401  (fixture)
from browserkit import (browser, explorer_alone, issues, open_page, page,  # noqa: F401
                        screenshot)  # (fixtures)
from mgpu_lab.figures import tta_explorer as tx
from mgpu_lab.measure import critical_sweep
from mgpu_lab.predict import time_to_accuracy as tta

DOCNAME = "book/13_time_to_accuracy"
SCRIPTS = ("vendor/vega.min.js", "vendor/vega-lite.min.js", "mgpu-explorer.js",
           "explorer-time-to-accuracy.js")

SET = """async ([root, changes]) => {
  for (const [name, label] of changes) {
    const el = root.querySelector('select[name="' + name + '"]');
    const i = Array.from(el.options).findIndex(o => o.text === String(label));
    if (i < 0) throw new Error('no option ' + label + ' for ' + name);
    el.selectedIndex = i;
    el.dispatchEvent(new Event('change', {bubbles: true}));
  }
  await root.mgpuRender;
  return Object.fromEntries(Array.from(root.querySelectorAll('[data-field]'))
    .map(el => [el.dataset.field, {text: el.textContent, value: el.dataset.value}]));
}"""
# The N of the rules drawn on the time chart, from Vega's aria labels ("n: 64; what: ...")
RULES = """root => Array.from(root.querySelectorAll('svg [aria-roledescription="rule mark"]'),
  e => e.getAttribute('aria-label') || '')"""


UNITS = {"h": 3600, "min": 60, "s": 1, "ms": 1e-3, "µs": 1e-6}  # as the page shows times


def _sweep():
    try:
        return critical_sweep.load()
    except FileNotFoundError:
        return None


WORKLOADS = {tx.workload_key(w): w for w in tx.book_workloads(_sweep())}


@pytest.fixture(scope="module")
def data():
    """The chapter's grid (cached on disk, as the book's build computes it)."""
    return tx.tta_data(list(WORKLOADS.values()))


def _label(d, strategy):
    return d["strategy_labels"][d["axes"]["strategy"].index(strategy)]


def _workload(d, key):
    return WORKLOADS[key]


# settings (workload index, GPU, strategy, split, N): host gather's interior optimum,
# a ring at the smallest split, the hierarchical cluster at a split that does not fit, and
# the last workload (the measured digits network when the sweep's data exist)
SETTINGS = [(1, "V100", "host", tx.BEST, 64), (0, "A100", "ring", 32, 256),
            (1, "H100", "hierarchical", 128, 8), (0, "K80", "hierarchical", 256, 16),
            (-1, "P100", "ring", tx.BEST, 2)]


def _expected(d, wi, gpu, strategy, split, n):
    key = d["axes"]["workload"][wi]
    work = _workload(d, key)
    b_mem = tta.memory_limit(work.model, gpu)
    cands = ([b for b in tx.TTA_SPLITS[1:] if b <= b_mem] + [b_mem] if split == tx.BEST
             else [split] * (split <= b_mem))
    cands = [b for b in cands if work.max_batch is None or n * b <= work.max_batch]
    plans = [tta.time_to_target(work, gpu, n, b, strategy) for b in cands]
    best = min(plans, key=lambda p: p.seconds) if plans else None
    return key, work, b_mem, best


def _check_shown(d, shown, wi, gpu, strategy, split, n):
    key, work, b_mem, p = _expected(d, wi, gpu, strategy, split, n)
    assert int(shown["b_mem"]["value"]) == b_mem
    b_star = tta.communication_limit(work.model, gpu, n, strategy)
    assert float(shown["b_star"]["value"]) == pytest.approx(b_star, rel=1e-3)
    assert float(shown["share"]["value"]) == pytest.approx(work.b_crit / n, rel=1e-3)
    if p is None:
        assert "does not fit" in shown["none_fits"]["text"]
        return
    assert int(shown["b"]["value"]) == p.batch_per_gpu and int(shown["batch"]["value"]) == p.batch
    assert float(shown["steps"]["value"]) == pytest.approx(p.steps, rel=1e-3)
    assert shown["steps"]["text"] == f"{round(float(shown['steps']['value'])):,}"
    assert float(shown["step_ms"]["value"]) == pytest.approx(1e3 * p.step_s, rel=1e-3)
    assert float(shown["comm_ms"]["value"]) == pytest.approx(1e3 * p.comm_s, rel=1e-3, abs=1e-9)
    number, unit = shown["time"]["text"].split(" ")
    assert float(number) * UNITS[unit] == pytest.approx(p.seconds, rel=6e-3)
    mark = d["marks"][f"{key}|{gpu}|{strategy}|{split}"]
    assert shown["best_n"]["text"] == (f"{mark['best']:,}" if mark["best"] else "–")


def _rules(root):
    out = {}
    for label in root.page.evaluate(RULES, root.element_handle()):
        kv = dict(part.split(": ", 1) for part in label.split("; ") if ": " in part)
        if "what" in kv:
            out[kv["what"]] = int(float(kv["n"].replace(",", "")))
    return out


def _drive(root, d):
    for wi, gpu, strategy, split, n in SETTINGS:
        shown = root.page.evaluate(SET, [root.element_handle(), [
            ["workload", d["axes"]["workload"][wi]], ["gpu", gpu],
            ["strategy", _label(d, strategy)], ["split", split], ["n_gpus", n]]])
        _check_shown(d, shown, wi, gpu, strategy, split, n)
        key = d["axes"]["workload"][wi]
        mark = d["marks"][f"{key}|{gpu}|{strategy}|{split}"]
        want = {w: mark[k] for k, w in (("stat", "batch reaches B_crit"),
                                        ("comm", "communication-bound"),
                                        ("best", "shortest time")) if mark[k] is not None}
        assert _rules(root) == want, (wi, gpu, strategy, split)


def test_marks_are_where_the_plans_cross_the_limits(data):
    """Without a browser: the grid's marks agree with the library's plans and limits."""
    key = data["axes"]["workload"][1]
    work = _workload(data, key)
    mark = data["marks"][f"{key}|V100|host|{tx.BEST}"]
    b_mem = tta.memory_limit(work.model, "V100")
    plans = {n: min((tta.time_to_target(work, "V100", n, b, "host")
                     for b in [*(b for b in tx.TTA_SPLITS[1:] if b <= b_mem), b_mem]),
                    key=lambda p: p.seconds) for n in tx.TTA_N}
    assert mark["best"] == min(plans, key=lambda n: plans[n].seconds)
    assert mark["stat"] == min(n for n, p in plans.items() if p.batch >= work.b_crit)
    comm = [n for n, p in plans.items()
            if tta.communication_limit(work.model, "V100", n, "host") > p.batch_per_gpu]
    assert mark["comm"] == (min(comm) if comm else None)
    assert math.isclose(data["b_crit_share"][key][3], work.b_crit / tx.TTA_N[3], rel_tol=1e-3)


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_the_explorer_on_its_own_page_shows_the_library_s_plans(browser, tmp_path, data):
    e = tx.time_to_accuracy(data=data)
    with explorer_alone(browser, tmp_path, e.html, "explorer-time-to-accuracy.js") as (
            pg, root, errors):
        assert root.locator(".mgpu-chart svg").count() == 1
        _drive(root, data)
        assert not errors, errors


@pytest.mark.browser
@pytest.mark.book
@pytest.mark.timeout(900)
def test_the_book_s_explorer_shows_the_library_s_plans_offline(page, issues, data):
    open_page(page, DOCNAME)
    root = page.locator('.mgpu-explorer[data-explorer="time-to-accuracy"]')
    assert root.count() == 1, f"{DOCNAME}: no time-to-accuracy explorer"
    page.wait_for_function("el => el.dataset.renders >= 1", arg=root.element_handle())
    assert "predicted" in root.locator(".mgpu-provenance").inner_text()
    _drive(root, data)
    screenshot(root, "explorer-13")
    issues.assert_none(DOCNAME)


def test_in_a_kernel_the_explorer_is_a_vega_lite_chart_of_the_same_hours(data, monkeypatch):
    """JupyterLab runs none of the book's scripts: there the explorer is a Vega-Lite chart
    whose rows are the grid's plans (hours = seconds / 3600), nothing fetched."""
    import json
    from mgpu_lab.figures import labcharts
    monkeypatch.delenv(labcharts.WEB_BOOK_ENV, raising=False)
    key = data["axes"]["workload"][1]
    e = tx.time_to_accuracy(workload=key, gpu="V100", strategy="host", data=data)
    bundle, _ = e._repr_mimebundle_()
    spec = bundle[labcharts.VEGALITE_MIME]
    assert "http" not in json.dumps(spec)
    rows = [r for r in spec["data"]["values"] if (r["workload"], r["gpu"], r["strategy"],
                                                   r["split"]) == (key, "V100", "host", tx.BEST)]
    want = tx.grid_rows(data, key, "V100", "host")
    assert [r["n"] for r in rows] == [w["n_gpus"] for w in want]
    assert [r["hours"] for r in rows] == pytest.approx([w["seconds"] / 3600 for w in want])
    monkeypatch.setenv(labcharts.WEB_BOOK_ENV, "1")
    assert 'class="mgpu-explorer"' in e._repr_mimebundle_()["text/html"]


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_the_lab_chart_compiles_with_the_vendored_vega_lite(browser, tmp_path, data):
    spec = tx.time_to_accuracy(data=data).spec
    static = ROOT / "book" / "_static"
    scripts = "".join(f'<script src="{(static / p).as_uri()}"></script>' for p in SCRIPTS[:2])
    path = tmp_path / "lab.html"
    path.write_text(f"<html><head>{scripts}</head><body><div id='c'></div></body></html>")
    pg = browser.new_page()
    try:
        pg.goto(path.as_uri())
        n_marks = pg.evaluate("""async spec => {
          const view = new vega.View(vega.parse(vegaLite.compile(spec).spec),
                                     {renderer: 'svg', container: '#c'});
          await view.runAsync();
          return document.querySelectorAll('#c svg [aria-roledescription="point"]').length;
        }""", spec)
        assert n_marks >= 5  # one point per N of the default setting
    finally:
        pg.close()
