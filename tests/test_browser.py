"""The built book in a real browser (Playwright driving Debian's Chromium).

For every page of the table of contents: the page loads with no request outside file://
and no JavaScript error (uncaught or on the console), every image is loaded with a
non-zero size, no cell output shows a traceback, every solution is hidden until its
summary is clicked and visible after, and the "next" link leads to the next page.
A full-page screenshot of each page goes to ``_build/screenshots/<page>.png``.

The browser, the recording page and the skip rules are in ``browserkit.py``; the
explorers of chapters 6 and 7 have their own tests (``test_explorers.py``).
"""
from pathlib import Path

import pytest

from bookbuild import HTML, built_book, chapters  # noqa: F401  (fixture)
from browserkit import browser, issues, open_page, page, screenshot  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.book, pytest.mark.timeout(1800)]

PAGES = chapters()


@pytest.mark.parametrize("docname", PAGES)
def test_page_loads_offline_with_images_no_js_error_and_no_traceback(page, issues, docname):
    open_page(page, docname)
    issues.assert_none(docname)
    assert page.locator("article.bd-article h1").first.is_visible(), f"{docname}: no visible title"
    broken = page.evaluate("""() => Array.from(document.images)
        .filter(img => !(img.complete && img.naturalWidth > 0 && img.naturalHeight > 0))
        .map(img => img.getAttribute('src'))""")
    assert not broken, f"{docname}: images not loaded: {broken}"
    outputs = page.locator(".cell_output").all_inner_texts()
    for text in outputs:
        assert "Traceback" not in text, f"{docname}: a cell output shows a traceback:\n{text}"
    screenshot(page, Path(docname).name)


@pytest.mark.parametrize("docname", [p for p in PAGES if "/0" in p])
def test_solutions_are_hidden_until_clicked(page, docname):
    open_page(page, docname)
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
    screenshot(page, f"{Path(docname).name}-solutions")


@pytest.mark.parametrize("i", range(len(PAGES) - 1), ids=lambda i: PAGES[i])
def test_next_link_reaches_the_next_page(page, i):
    open_page(page, PAGES[i])
    nxt = page.locator("a.right-next")
    assert nxt.count() == 1, f"{PAGES[i]}: no 'next' link"
    nxt.click()
    page.wait_for_load_state("load")
    expected = (HTML / f"{PAGES[i + 1]}.html").as_uri()
    assert page.url.split("#")[0] == expected, f"'next' on {PAGES[i]} went to {page.url}"
    assert page.locator("article.bd-article h1").first.is_visible()
