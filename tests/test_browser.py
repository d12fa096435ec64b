"""The built book in a real browser (Playwright driving Debian's Chromium).

For every page of the table of contents: the page loads, every image is loaded with a
non-zero size, no cell output shows a traceback, every solution is hidden until its
summary is clicked and visible after, and the "next" link leads to the next page.
A full-page screenshot of each page goes to ``_build/screenshots/<page>.png``.

Playwright's own browser download does not work here, so the test uses the system's
Chromium (``apt-get install chromium``). Without it the test skips, except on CI (the
environment variable ``CI`` is set), where a missing browser is a failure.
"""
import os
import shutil
from pathlib import Path

import pytest

from bookbuild import HTML, ROOT, built_book, chapters  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(1800)]

SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
PAGES = chapters()


def _chromium():
    for path in (os.environ.get("MGPU_CHROMIUM"), *CHROMIUM_PATHS,
                 shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = _chromium()
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


@pytest.fixture
def page(browser, built_book):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    # the book must work offline: only local files load (widget JS from a CDN may not)
    pg.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
             else route.abort())
    yield pg
    context.close()


def _open(page, docname):
    url = (HTML / f"{docname}.html").as_uri()
    response = page.goto(url, wait_until="load")
    assert response is None or response.ok, f"{docname}: loading {url} failed"
    return url


def _screenshot(page, name):
    """A full-page screenshot, scrolled to the top with nothing focused (so the theme's
    sticky header and skip link are where a reader sees them)."""
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); "
                  "window.scrollTo(0, 0); }")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("docname", PAGES)
def test_page_loads_with_images_and_no_traceback(page, docname):
    _open(page, docname)
    assert page.locator("article.bd-article h1").first.is_visible(), f"{docname}: no visible title"
    broken = page.evaluate("""() => Array.from(document.images)
        .filter(img => !(img.complete && img.naturalWidth > 0 && img.naturalHeight > 0))
        .map(img => img.getAttribute('src'))""")
    assert not broken, f"{docname}: images not loaded: {broken}"
    outputs = page.locator(".cell_output").all_inner_texts()
    for text in outputs:
        assert "Traceback" not in text, f"{docname}: a cell output shows a traceback:\n{text}"
    _screenshot(page, Path(docname).name)


@pytest.mark.parametrize("docname", [p for p in PAGES if "/0" in p])
def test_solutions_are_hidden_until_clicked(page, docname):
    _open(page, docname)
    # sphinx-design dropdowns (the written solution) and hidden code cells (its code)
    solutions = page.locator("details.solution, div.tag_solution details")
    count = solutions.count()
    assert count >= 2, f"{docname}: only {count} solutions"
    for i in range(count):
        details = solutions.nth(i)
        body = details.locator(":scope > :not(summary)").first
        assert details.get_attribute("open") is None, f"{docname}: solution {i} starts open"
        assert not body.is_visible(), f"{docname}: solution {i} is visible before a click"
        details.locator(":scope > summary").click()
        assert details.get_attribute("open") is not None, f"{docname}: solution {i} did not open"
        body.wait_for(state="visible", timeout=5000)
    _screenshot(page, f"{Path(docname).name}-solutions")


@pytest.mark.parametrize("i", range(len(PAGES) - 1), ids=lambda i: PAGES[i])
def test_next_link_reaches_the_next_page(page, i):
    _open(page, PAGES[i])
    nxt = page.locator("a.right-next")
    assert nxt.count() == 1, f"{PAGES[i]}: no 'next' link"
    nxt.click()
    page.wait_for_load_state("load")
    expected = (HTML / f"{PAGES[i + 1]}.html").as_uri()
    assert page.url.split("#")[0] == expected, f"'next' on {PAGES[i]} went to {page.url}"
    assert page.locator("article.bd-article h1").first.is_visible()
