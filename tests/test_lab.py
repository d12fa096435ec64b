"""`make lab` in a real browser: JupyterLab opens the chapters as notebooks and runs them.

The test starts the server with the command `make lab` runs (``jupyter/start-lab.sh``)
and checks that it listens on 127.0.0.1 only and opens at the chapters (the file browser
lists them, and not the build's ``_ext/``, ``_static/`` or ``.bib`` files). It opens chapter
7 by double-clicking it in the file browser (a notebook, MyST rendered), runs every cell on
the .venv's kernel and checks that no cell fails. The explorer is a chart JupyterLab draws
itself (Vega-Lite): its numbers, before and after changing its GPU control, must be what
``mgpu_lab.predict.memory.max_batch_size`` computes here. Then it changes the kernel
widget's GPU: the per-GPU batch it prints must be the same, and its figure must be drawn
(a blank, all-white image fails). Chapter 6's widget only measures,
so the test runs its imports and its widget and checks the controls. The browser may not
reach anything but the server (any other request is blocked and fails the test), write no
file, nor log a JavaScript error. At the end the server shuts its kernels down and no
process it started may be left. Screenshots: ``_build/screenshots/lab-07.png``,
``lab-07-explorer.png`` and ``lab-06.png``; the server's start-up time (seconds to its first HTTP answer) is printed.

Chromium as in ``browserkit``: without it the test skips, except on CI (``CI`` set). The
first run compiles chapter 7's Theano graphs (minutes); later runs reuse ``~/.theano/mgpu_lab``.
"""
import base64
import io
import json
import os
import re
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest

from browserkit import browser  # noqa: F401  (fixture: Debian's Chromium via Playwright)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
START_LAB = ROOT / "jupyter" / "start-lab.sh"  # the command `make lab` runs
SCREENSHOTS = ROOT / "_build" / "screenshots"
RUN_TIMEOUT_S = 900  # chapter 7 on a cold ~/.theano/mgpu_lab compiles its graphs first
WIDGET_CALL = re.compile(r"widget\w*\(|interact")
SUMMARY = re.compile(r"ResNet-(\d+)-like at (\d+) px on (\d+) x (\S+) .*?"
                     r"at most (\d+) images per GPU")
EXPLORER = re.compile(r"ResNet-(\d+)-like at (\d+) px on (\d+) x (\S+), (\w+)"
                      r"(?:, sharding .*?)?:\s*"
                      r"at most ([\d,]+) images per GPU, a global batch of ([\d,]+)")
HIDDEN = ("_ext", "_static", "images", "references.bib")  # not listed by the lab


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running server: its process, URL and token, and REST calls with the token."""

    def __init__(self, proc, port, token, log):
        self.proc, self.port, self.token, self.log = proc, port, token, log
        self.url = f"http://127.0.0.1:{port}"

    def api(self, path, method="GET"):
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self):
        for k in self.api("/api/kernels"):
            self.api(f"/api/kernels/{k['id']}", method="DELETE")

    def log_tail(self):
        return self.log.read_text(errors="replace")[-3000:]


def _wait_until_answering(lab, timeout=120):
    """Seconds from start until the server's first successful HTTP answer."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if lab.proc.poll() is not None:
            pytest.fail(f"the lab server exited with {lab.proc.returncode}:\n{lab.log_tail()}")
        try:
            lab.api("/api/status")
            return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.1)
    pytest.fail(f"the lab server did not answer within {timeout} s:\n{lab.log_tail()}")


def _stop(lab):
    """Shut the server down through its API (it stops its kernels) and check that no
    process it started is left; kill and report any that are."""
    started = psutil.Process(lab.proc.pid).children(recursive=True)
    try:
        lab.api("/api/shutdown", method="POST")
        lab.proc.wait(timeout=60)
    except Exception:  # noqa: BLE001  (a server that does not stop is killed; its kernels
        lab.proc.kill()  # are then checked, killed and reported below)
        lab.proc.wait(timeout=10)
    _, alive = psutil.wait_procs(started, timeout=15)
    for p in alive:
        p.kill()
    assert not alive, f"processes left after the lab server stopped: {alive}"


def _remove_new_checkpoints(folder, before):
    if not folder.is_dir():
        return
    for path in set(folder.iterdir()) - (before or set()):
        path.unlink()
    if before is None and not any(folder.iterdir()):
        folder.rmdir()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The server `make lab` starts, on a free port with a random token.

    Its user config (settings, workspaces) lives in a temporary folder, so the user's own
    JupyterLab settings cannot change what the test sees."""
    config = tmp_path_factory.mktemp("jupyter-config")
    # JupyterLab saves a checkpoint of each document it opens (book/.ipynb_checkpoints,
    # git-ignored); the test removes those it made
    checkpoints = ROOT / "book" / ".ipynb_checkpoints"
    before = set(checkpoints.iterdir()) if checkpoints.is_dir() else None
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config),
               JUPYTER_RUNTIME_DIR=str(tmp_path_factory.mktemp("jupyter-runtime")))
    port, token = _free_port(), secrets.token_hex(16)
    args = ["--no-browser", f"--port={port}", f"--IdentityProvider.token={token}"]
    if os.geteuid() == 0:  # containers and CI run as root; Jupyter refuses that unasked
        args.append("--allow-root")
    log = config / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(START_LAB), *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(proc, port, token, log)
    try:
        print(f"\nlab server start-up: {_wait_until_answering(server):.1f} s "
              "to the first HTTP answer")
        listening = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}, f"the lab listens on {listening}, not 127.0.0.1 only"
        yield server
    finally:
        _stop(server)
        _remove_new_checkpoints(checkpoints, before)


@pytest.fixture
def page(browser, lab):
    """A page that may load only from the lab server; anything else is blocked and fails.
    It may not write files either: running a chapter must leave book/*.md as it was
    (the repository's settings turn autosave off; saving rewrites a chapter's layout)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    outside, writes, js_errors = [], [], []

    def only_local(route):
        url, method = route.request.url, route.request.method
        if urlparse(url).scheme in ("data", "blob") or urlparse(url).hostname == "127.0.0.1":
            if ("/api/contents/" in url and "/checkpoints" not in url
                    and method in ("PUT", "PATCH", "POST", "DELETE")):
                writes.append(f"{method} {url}")
            route.continue_()
        else:
            outside.append(url)
            route.abort()
    context.route("**/*", only_local)
    pg = context.new_page()
    pg.on("pageerror", lambda e: js_errors.append(str(e)))
    pg.on("console", lambda m: js_errors.append(m.text) if m.type == "error" else None)
    yield pg
    context.close()
    lab.shutdown_kernels()
    assert not outside, f"the lab tried to reach the network: {outside}"
    assert not writes, f"the lab wrote files: {writes}"
    assert not js_errors, f"JavaScript errors in JupyterLab: {js_errors}"


def _open_chapter(page, lab, chapter):
    """Open book/<chapter> by double-clicking it in the file browser; return its panel."""
    # a workspace of its own, reset: no document from an earlier test is reopened
    page.goto(f"{lab.url}/lab/workspaces/{Path(chapter).stem}?reset&token={lab.token}")
    listing = page.locator(".jp-DirListing-content")
    item = listing.locator(".jp-DirListing-item").filter(
        has=page.locator(".jp-DirListing-itemText", has_text=re.compile(f"^{re.escape(chapter)}$")))
    item.wait_for(timeout=60_000)  # the lab opens at the chapters: no folder to enter
    names = listing.locator(".jp-DirListing-itemText").all_text_contents()
    assert "01_how_to_use.md" in names and not set(HIDDEN) & set(names), names
    item.dblclick(timeout=60_000)
    panel = page.locator(".jp-NotebookPanel:visible")
    panel.wait_for(timeout=60_000)  # a text editor would be a .jp-FileEditor instead
    tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel")
    assert tab.inner_text() == chapter, f"the current tab is {tab.inner_text()!r}"
    cells = (ROOT / "book" / chapter).read_text().count("```{code-cell}")
    panel.locator(".jp-CodeCell").nth(cells - 1).wait_for(timeout=30_000)
    assert panel.locator(".jp-CodeCell").count() == cells, \
        f"{chapter} opened with {panel.locator('.jp-CodeCell').count()} code cells, not {cells}"
    return panel


def _kernel_process(lab):
    """The one kernel the server runs: its command line."""
    kernels = [p for p in psutil.Process(lab.proc.pid).children()
               if "ipykernel_launcher" in " ".join(p.cmdline())]
    assert len(kernels) == 1, f"expected one kernel, found {[k.cmdline() for k in kernels]}"
    return kernels[0].cmdline()


def _run(page, panel, lab, chapter, cells=None):
    """Run every code cell (Run > Run All Cells), or only ``cells`` (select each, then
    Shift+Enter); wait until the kernel is idle; check that each cell ran without error."""
    if cells is None:
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()
        cells = panel.locator(".jp-CodeCell").all()
    else:
        for cell in cells:
            cell.locator(".jp-InputPrompt").click()  # selects the cell (command mode)
            page.keyboard.press("Shift+Enter")
    prompts = panel.locator(".jp-CodeCell .jp-InputPrompt")
    deadline, quiet = time.monotonic() + RUN_TIMEOUT_S, 0
    while time.monotonic() < deadline:
        busy = any("*" in t for t in prompts.all_text_contents())
        idle = panel.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count()
        quiet = quiet + 1 if (not busy and idle) else 0
        if quiet >= 3:  # three polls in a row: not a pause between two cells
            break
        time.sleep(1)
    else:
        pytest.fail(f"{chapter}: the cells did not finish in {RUN_TIMEOUT_S} s")
    # the kernel is the project's: the .venv's python runs ipykernel
    argv0 = _kernel_process(lab)[0]
    assert argv0.startswith(str(ROOT / ".venv" / "bin" / "python")), f"kernel runs {argv0}"
    errors = [t for t in panel.locator(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], '
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]'
    ).all_text_contents() if "Traceback" in t or "Error" in t.split("\n", 1)[0]]
    assert not errors, f"{chapter}: a cell failed:\n{errors[0][:3000]}"
    prompts = [c.locator(".jp-InputPrompt").text_content() for c in cells]
    not_run = [t for t in prompts if not re.search(r"\[\d+\]", t)]
    assert not not_run, f"{chapter}: {len(not_run)} code cells did not run: {not_run}"


def _control(page, kind, label):
    """An ipywidgets control of this kind (dropdown, slider) with this description."""
    return page.locator(f".widget-{kind}").filter(
        has=page.locator("label.widget-label", has_text=re.compile(f"^{label}$")))


def _summary(cell, gpu, timeout=180):
    """(depth, image px, GPUs, per-GPU batch) from the widget's summary line for this GPU."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = SUMMARY.search(cell.text_content())
        if m and m.group(4) == gpu:
            return int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(5))
        time.sleep(0.5)
    pytest.fail(f"no summary for {gpu} in the widget's output:\n{cell.text_content()[-2000:]}")


def _predicted_per_gpu(depth, image_size, gpu, optimizer="momentum"):
    from mgpu_lab import models
    from mgpu_lab.predict import gpus, memory
    net = models.resnet_like(depth, image_size=image_size)  # the chapter's network
    # the chapter's convention: momentum, each GPU's memory less the stated reserve
    return memory.max_batch_size(net, gpus.usable_bytes(gpu), optimizer=optimizer)


def _assert_drawn(img, what, timeout=60_000):
    """Wait for the widget's figure; fail if it is a blank (all-white) image.

    The widget shows a PNG it draws itself (``widgets.show_figure``): through
    ``plt.show()`` and the inline backend, a first figure could come out as text or blank."""
    img.last.wait_for(state="attached", timeout=timeout)
    img.last.evaluate("i => i.decode()")  # decoded, so that the screenshot shows it whole
    from PIL import Image  # matplotlib's dependency
    data = base64.b64decode(img.last.get_attribute("src").split(",", 1)[1])
    image = Image.open(io.BytesIO(data))
    darkest, _ = image.convert("L").getextrema()
    if darkest >= 128:  # kept for a look: what the kernel sent
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / "blank-figure.png").write_bytes(data)
    n = img.count()
    assert darkest < 128, (f"{what} is a blank image (darkest pixel {darkest}, {image.size} "
                           f"px, {n} image(s) in the output; saved to blank-figure.png)")


def _screenshot(page, name, element, block="start"):
    """The window, with ``element`` (a widget's output) scrolled into view (``block``)."""
    element.evaluate("(e, block) => e.scrollIntoView({block})", block)
    page.wait_for_timeout(1500)  # let the notebook paint what scrolled into view
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def _explorer_numbers(chart):
    """(depth, px, GPUs, GPU, optimizer, per GPU, global batch) from the lab's chart."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = EXPLORER.search(" ".join(chart.locator("svg text").all_text_contents()))
        if m:
            d, px, n, gpu, opt, per, total = m.groups()
            return int(d), int(px), int(n), gpu, opt, int(per.replace(",", "")), \
                int(total.replace(",", ""))
        time.sleep(0.5)
    pytest.fail(f"no summary in the explorer's chart: {chart.inner_text()[:1000]}")


def _check_explorer(page, panel):
    """Chapter 7's explorer, drawn by JupyterLab (Vega-Lite), shows the memory model's
    numbers, before and after a change of its GPU control."""
    assert "Vega was not loaded" not in panel.inner_text()
    chart = panel.locator(".jp-RenderedVegaLite")
    assert chart.count() == 1, "chapter 7's explorer is not a Vega-Lite chart in the lab"
    chart.locator("svg").first.wait_for(timeout=60_000)
    assert chart.locator("svg rect, svg path").count() > 5, "the explorer's chart is empty"
    for target in (None, "A100-80GB"):
        if target:
            select = chart.locator(".vega-bind").filter(
                has=page.locator(".vega-bind-name", has_text=re.compile("^GPU"))).locator("select")
            select.select_option(target)
        depth, px, n, gpu, opt, per, total = _explorer_numbers(chart)
        assert target in (None, gpu)
        expected = _predicted_per_gpu(depth, px, gpu, opt)
        print(f"\nchapter 7 explorer in the lab: ResNet-{depth}-like, {px} px, {n} x {gpu}, "
              f"{opt}: {per} per GPU shown, {expected} predicted here")
        assert (per, total) == (expected, n * expected)
    _scroll_to(page, panel, chart)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "lab-07-explorer.png"))


def _scroll_to(page, panel, element, top=160):
    """Scroll the notebook with the mouse wheel until ``element`` starts ``top`` px down
    (JupyterLab lays long notebooks out lazily, so scrollIntoView may stop short)."""
    box = panel.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(20):
        at = element.bounding_box()
        if at and abs(at["y"] - top) < 40:
            break
        page.mouse.wheel(0, (at["y"] - top) if at else 400)
        page.wait_for_timeout(400)
    page.wait_for_timeout(1000)  # let the notebook paint what scrolled into view


def test_chapter_7_runs_in_lab_and_its_widget_predicts_the_memory_model(page, lab):
    panel = _open_chapter(page, lab, "07_batch_limits.md")
    # MyST markup is rendered (jupyterlab-myst), not shown as text: the admonitions
    exercise = panel.locator('.jp-MarkdownCell aside[class*="admonition"]',
                             has_text="Exercise 7.1")
    exercise.first.wait_for(state="attached", timeout=30_000)
    assert not any(":::{admonition}" in t for t in
                   panel.locator(".jp-MarkdownCell .jp-RenderedMarkdown").all_text_contents())
    _run(page, panel, lab, "07_batch_limits.md")
    _check_explorer(page, panel)

    gpu = _control(page, "dropdown", "GPU")
    assert gpu.count() == 1, "chapter 7 shows no dropdown labelled GPU"
    cell = panel.locator(".jp-CodeCell").filter(has=gpu)
    depth, size, n, per = _summary(cell, gpu.locator("select").input_value())
    assert per == _predicted_per_gpu(depth, size, gpu.locator("select").input_value())

    target = "A100-80GB"
    gpu.locator("select").select_option(target)
    depth, size, n, per = _summary(cell, target)
    expected = _predicted_per_gpu(depth, size, target)
    print(f"\nchapter 7 widget: ResNet-{depth}-like, {size} px, {n} x {target}: "
          f"{per} images per GPU shown, {expected} predicted here")
    assert per == expected
    _assert_drawn(cell.locator(".widget-output img"), f"chapter 7's figure for {target}")
    _screenshot(page, "lab-07", cell.locator(".jp-Cell-outputArea"))


def test_chapter_6_runs_in_lab_and_its_widget_shows_its_controls(page, lab):
    # chapter 6's widget only measures (it starts worker processes when asked to run);
    # it has no predicted part, so the test checks that its controls render. It runs
    # only the imports and the widget's cell: the chapter's own benchmark (minutes of
    # worker processes) is run by the book's build, not here.
    panel = _open_chapter(page, lab, "06_throughput.md")
    code = panel.locator(".jp-CodeCell")
    # the cell that makes the widget: it calls interact or a library's *widget*() function
    widget_cell = code.filter(has=page.locator(".jp-InputArea", has_text=WIDGET_CALL)).last
    _run(page, panel, lab, "06_throughput.md", cells=[code.first, widget_cell])
    controls = widget_cell.locator(".widget-dropdown, .widget-slider")
    assert controls.count() >= 2, "chapter 6's widget shows fewer than two controls"
    labels = [t.strip().lower() for t in controls.locator("label.widget-label").all_text_contents()]
    assert any("device" in t for t in labels), f"no control for the devices: {labels}"
    run = widget_cell.locator(".widget-button", has_text="Run")
    assert run.count() >= 1, "chapter 6's widget has no button to run the measurement"
    _screenshot(page, "lab-06", widget_cell.locator(".jp-Cell-outputArea"), block="center")
