"""What the browser tests share: Debian's Chromium driven by Playwright, and a page that
records what the book must never do offline.

Playwright's own browser download does not work here, so the tests use the system's
Chromium (``apt-get install chromium``, or ``MGPU_CHROMIUM=/path``). Without it they skip,
except on CI (the environment variable ``CI`` is set), where a missing browser is a failure.

The ``page`` fixture lets only ``file:`` (and inline ``data:``/``blob:``) requests through;
every other request is aborted *and* recorded in ``issues.offsite``, and every uncaught
exception or ``console.error`` goes to ``issues.js_errors``; tests assert both are empty.
"""
import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bookbuild import BUILD, HTML, ROOT

STATIC = ROOT / "book" / "_static"  # the explorers' scripts and the vendored Vega

__all__ = ["CHROMIUM_PATHS", "SCREENSHOTS", "STATIC", "Issues", "chromium", "browser", "issues",
           "page", "open_page", "explorer_alone", "screenshot"]

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
SCREENSHOTS = BUILD / "screenshots"
LOCAL_SCHEMES = ("file:", "data:", "blob:")


def chromium():
    for path in (os.environ.get("MGPU_CHROMIUM"), *CHROMIUM_PATHS,
                 shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium()
    if path is None:
        reason = ("no Chromium found (looked for " + ", ".join(CHROMIUM_PATHS) +
                  " and chromium on PATH): install Debian's with `apt-get install chromium` "
                  "(.ci/run does)")
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but {reason}", pytrace=False)
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # requirements.txt installs it
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the playwright package is missing: {e}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


@dataclass
class Issues:
    """What a page did that the offline book must not do."""

    offsite: list = field(default_factory=list)  # URLs of requests that were not local
    js_errors: list = field(default_factory=list)  # uncaught exceptions, console errors

    def assert_none(self, where):
        assert not self.offsite, f"{where}: requests outside file:// (aborted): {self.offsite}"
        assert not self.js_errors, f"{where}: JavaScript errors: {self.js_errors}"


@pytest.fixture
def issues():
    return Issues()


@pytest.fixture
def page(browser, built_book, issues):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(90_000)  # a loaded 2-core machine can take long for a page

    def route(r):
        if r.request.url.startswith(LOCAL_SCHEMES):
            r.continue_()
        else:  # the book must work offline: record the request, then refuse it
            issues.offsite.append(r.request.url)
            r.abort()
    pg.route("**/*", route)
    pg.on("pageerror", lambda e: issues.js_errors.append(f"uncaught: {e}"))
    pg.on("console", lambda m: issues.js_errors.append(f"console.error: {m.text}")
          if m.type == "error" else None)
    yield pg
    context.close()


def open_page(page, docname):
    """Load a page of the built book (the load event waits for its async scripts too)."""
    url = (HTML / f"{docname}.html").as_uri()
    response = page.goto(url, wait_until="load")
    assert response is None or response.ok, f"{docname}: loading {url} failed"
    return url


@contextlib.contextmanager
def explorer_alone(browser, tmp_path, html, script):
    """One explorer on a page of its own (no book build): its HTML, the vendored Vega and
    Vega-Lite, mgpu-explorer.js and its ``script`` from book/_static. Yields ``(page, root,
    errors)`` once the chart has rendered; ``errors`` collects page errors and console
    errors. The page is closed on the way out."""
    scripts = "".join(f'<script src="{(STATIC / p).as_uri()}"></script>' for p in (
        "vendor/vega.min.js", "vendor/vega-lite.min.js", "mgpu-explorer.js", script))
    path = tmp_path / "explorer.html"
    path.write_text(f"<html><head>{scripts}</head><body>{html}</body></html>")
    pg, errors = browser.new_page(), []
    pg.on("pageerror", lambda ex: errors.append(str(ex)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        pg.goto(path.as_uri())
        root = pg.locator(".mgpu-explorer")
        pg.wait_for_function("el => el.dataset.renders >= 1", arg=root.element_handle())
        yield pg, root, errors
    finally:
        pg.close()


def screenshot(target, name, full_page=True):
    """A screenshot of a page (scrolled to the top, nothing focused) or of one element."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if hasattr(target, "goto"):  # a page
        target.evaluate("() => { document.activeElement && document.activeElement.blur(); "
                        "window.scrollTo(0, 0); }")
        target.screenshot(path=str(path), full_page=full_page)
    else:  # an element: in a tall window, below the theme's sticky header
        target.page.set_viewport_size({"width": 1280, "height": 1800})
        target.evaluate("el => window.scrollTo(0, el.getBoundingClientRect().top "
                        "+ window.scrollY - 120)")
        target.screenshot(path=str(path))
    return path
