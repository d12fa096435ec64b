"""Chapter 7's explorer as JupyterLab draws it (``labcharts.batch_limits_spec``): all eight
controls of the web page, the grid held once (issue 25: precision and recomputation; and
sharding).

Without a browser: the chart's parameters and their defaults, and its size next to the
grid's. In Chromium (``browser``; skips without it): the chart compiled by the vendored
Vega-Lite and run by the vendored Vega, its controls set through their inputs as a reader
would, and the numbers it computes compared with ``explorers.limits_parts`` and the
grid's per-GPU limit for settings away from the defaults.
"""
import json

import pytest

from browserkit import STATIC, browser  # noqa: F401  (fixture)
from mgpu_lab.figures import explorers, labcharts

CONTROLS = ("gpu", "image_size", "depth", "n_gpus", "optimizer", "sharding", "precision",
            "recompute")
SETTINGS = [  # the call's default first, then settings of every control away from it
    dict(gpu="V100", image_size=32, depth=26, n_gpus=4, optimizer="momentum", sharding=0,
         precision="fp32", recompute=False),
    dict(gpu="K80", image_size=64, depth=26, n_gpus=8, optimizer="adam", sharding=2,
         precision="fp16", recompute=True),
    dict(gpu="V100", image_size=64, depth=26, n_gpus=1, optimizer="sgd", sharding=3,
         precision="fp16", recompute=False),
    dict(gpu="K80", image_size=32, depth=26, n_gpus=3, optimizer="momentum", sharding=1,
         precision="fp32", recompute=True)]


@pytest.fixture(scope="module")
def grid():
    """Two GPUs, two image sizes, one depth, every other setting (about a second)."""
    return explorers.batch_limits_data(sizes=(32, 64), depths=(26,), kinds=["V100", "K80"],
                                       cache=False)


def _size(x):
    return len(json.dumps(x, separators=(",", ":")))


def test_the_lab_chart_binds_every_control_and_holds_the_grid_once(grid):
    spec = explorers.batch_limits(data=grid, **SETTINGS[1]).spec
    params = {p["name"]: p for p in spec["params"]}
    assert list(params) == list(CONTROLS)
    assert {k: p["value"] for k, p in params.items()} == SETTINGS[1]
    for name in ("sharding", "precision", "recompute"):  # the web page's labels
        assert params[name]["bind"]["options"] == grid["axes"][name]
        assert params[name]["bind"]["labels"] == grid[f"{name}_labels"]
    assert params["n_gpus"]["bind"]["input"] == "range"
    [datum] = spec["data"]["values"]  # one datum: the factored grid, not a row per setting
    assert datum["per_gpu"] == grid["per_gpu"] and datum["step"] == grid["step"]
    assert _size(spec) - _size(grid) < 8_000  # the chart itself: a few kB
    assert "http" not in json.dumps(spec)  # nothing for vega-embed to fetch


# Set the controls through the inputs Vega binds (by the option's label, as a reader picks
# it), let the view run, and return what it computed and what it drew.
DRIVE = """async ([spec, steps]) => {
  const vgSpec = vegaLite.compile(spec).spec;
  const view = new vega.View(vega.parse(vgSpec), {renderer: 'svg', container: '#c'});
  await view.runAsync();
  const out = [];
  for (const step of steps) {
    for (const [name, value] of Object.entries(step)) {
      const el = document.querySelector('#c [name="' + name + '"]');
      if (el.tagName === 'SELECT') {
        const i = Array.from(el.options).findIndex(o => o.text === String(value));
        if (i < 0) throw new Error('no option ' + value + ' for ' + name);
        el.selectedIndex = i;
        el.dispatchEvent(new Event('change'));
      } else {
        el.value = value;
        el.dispatchEvent(new Event('input'));
      }
    }
    await view.runAsync();
    const rows = vgSpec.data.flatMap(d => view.data(d.name));  // live: copy what we keep
    const row = rows.find(r => 'p_parameters' in r && !('summary' in r));
    out.push({signals: Object.fromEntries(Object.keys(step).map(k => [k, view.signal(k)])),
              looked_up: Object.fromEntries(Object.keys(row).filter(
                k => k === 'per' || k === 'usable_gib' || k.startsWith('p_')).map(
                k => [k, row[k]])),
              summary: rows.find(r => 'summary' in r).summary,
              bars: document.querySelectorAll('#c svg [aria-roledescription="bar"]').length,
              text: Array.from(document.querySelectorAll('#c svg text'),
                               t => t.textContent).join(' ')});
  }
  return out;
}"""


def _labelled(grid, setting):
    """``setting`` as the reader picks it: the option's label where a select has labels."""
    out = {}
    for name, value in setting.items():
        labels = grid.get(f"{name}_labels")
        out[name] = labels[grid["axes"][name].index(value)] if labels else value
    return out


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_the_lab_chart_looks_every_setting_up_as_the_library_does(browser, grid, tmp_path):
    spec = explorers.batch_limits(data=grid, **SETTINGS[0]).spec
    scripts = "".join(f'<script src="{(STATIC / p).as_uri()}"></script>'
                      for p in ("vendor/vega.min.js", "vendor/vega-lite.min.js"))
    path = tmp_path / "lab.html"
    path.write_text(f"<html><head>{scripts}</head><body><div id='c'></div></body></html>")
    pg, errors = browser.new_page(), []
    pg.on("pageerror", lambda ex: errors.append(str(ex)))
    pg.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning")
          else None)
    try:
        pg.goto(path.as_uri())
        out = pg.evaluate(DRIVE, [spec, [_labelled(grid, s) for s in SETTINGS]])
    finally:
        pg.close()
    assert not errors, errors
    for setting, got in zip(SETTINGS, out):
        assert got["signals"] == setting  # the inputs gave the values (booleans, numbers)
        per = grid["per_gpu"][explorers._flat_index(grid["axes"], **setting)]
        parts = explorers.limits_parts(grid, **setting)
        row = got["looked_up"]
        assert row["per"] == per, setting
        assert [round(row[f"p_{p}"] * 2 ** 30) for p in grid["parts"]] == parts, setting
        assert row["usable_gib"] * 2 ** 30 == grid["gpus"][setting["gpu"]]["usable_bytes"]
        # the summary is the kernel's text line for the same setting (one line break)
        text = explorers.batch_limits(data=grid, **setting).text
        assert got["summary"] == text.replace(": at most", ":\nat most"), setting
        assert f"at most {per:,} images per GPU" in got["text"]
        assert got["bars"] == len(grid["parts"])


def test_tf32_and_bf16_are_read_as_the_grid_stores_them_and_off_grid_values_are_refused(grid):
    at = dict(SETTINGS[1], precision="bf16")
    assert explorers.batch_limits(data=grid, **at).text == \
        explorers.batch_limits(data=grid, **SETTINGS[1]).text  # bf16: fp16's bytes
    at = dict(SETTINGS[0], precision="tf32")
    assert explorers.batch_limits(data=grid, **at).spec["params"][6]["value"] == "fp32"
    with pytest.raises(ValueError, match=r"image_size=224 is not on the explorer's grid: "
                                         r"choose one of \[32, 64\]"):
        explorers.batch_limits(data=grid, **dict(SETTINGS[0], image_size=224))
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        explorers.batch_limits(data=grid, **dict(SETTINGS[0], precision="fp8"))
