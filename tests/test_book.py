"""The book: every chapter executes and renders, with its figures, exercises and solutions.

The build itself (``jupyter-book build . $(BOOK_FLAGS)``, as ``make book``) runs once per
session in the ``built_book`` fixture (tests/bookbuild.py): it fails on any cell error
(``allow_errors: false``) and on any Sphinx warning (``-W``). The tests below then read
the HTML it wrote. Two checks need no build: the chapters' sources never redefine a
library function, and every listing of library code names a real function.
"""
import ast
import re
from html.parser import HTMLParser

import pytest

from bookbuild import HTML, ROOT, built_book, chapters  # noqa: F401  (fixture)

pytestmark = [pytest.mark.book, pytest.mark.timeout(1800)]  # the session's first test waits for the build

BOOK = ROOT / "book"
NUMBERED = [c for c in chapters() if re.match(r"book/\d\d_", c)]  # chapters 1..13
NOTEBOOKS = sorted(p for p in BOOK.glob("*.md") if "kernelspec:" in p.read_text())

# Figures each page must show (at least): generated plots are PNG files in _images/.
EXPECTED_FIGURES = {
    "book/intro": 1, "book/01_how_to_use": 0, "book/02_why_more_gpus": 2,
    "book/03_four_steps": 0, "book/04_checking_the_maths": 1, "book/05_training": 2,
    "book/06_throughput": 3, "book/07_batch_limits": 4, "book/08_collectives": 8, "book/09_sharding": 3, "book/10_communication": 3,
    "book/12_beyond": 4, "book/teachers_guide": 0, "book/references": 0,
    "book/11_cost_model": 3, "book/13_time_to_accuracy": 5,
}


class _Page(HTMLParser):
    """Images, exercise titles, solution dropdowns and hidden solution cells of a page."""

    def __init__(self):
        super().__init__()
        self.images, self.dropdowns, self.hidden_cells = [], [], []
        self.text, self._in_title = [], False
        self.prose_and_outputs = []  # the text without code listings (source, not output)
        self._divs = []  # for each open div: is it a code listing?

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "div":  # listings: literalinclude and cell inputs, highlighted as Python
            self._divs.append(any(c in ("highlight-python", "highlight-ipython3", "highlight-default")
                                   for c in classes))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "details" and "sd-dropdown" in classes:
            self.dropdowns.append(("solution" in classes, "open" in a))
        if tag == "div" and "tag_solution" in classes:
            self.hidden_cells.append("tag_hide-cell" in classes)

    def handle_endtag(self, tag):
        if tag == "div" and self._divs:
            self._divs.pop()

    def handle_data(self, data):
        self.text.append(data)
        if not any(self._divs):
            self.prose_and_outputs.append(data)


def _parse(docname):
    page = _Page()
    page.feed((HTML / f"{docname}.html").read_text())
    page.text = "".join(page.text)
    page.prose_and_outputs = "".join(page.prose_and_outputs)
    return page


def test_toc_lists_every_chapter_and_the_guide():
    assert len(NUMBERED) == 13, NUMBERED  # chapters 1-13
    assert "book/teachers_guide" in chapters()
    for c in chapters():
        assert (ROOT / f"{c}.md").exists(), f"_toc.yml lists {c}, but {c}.md is missing"
    assert set(EXPECTED_FIGURES) == set(chapters())


@pytest.mark.parametrize("docname", chapters())
def test_page_is_rendered(built_book, docname):
    page = built_book.page(docname)
    assert page.exists(), f"{page} was not written by the build"
    text = _parse(docname).text
    assert len(text) > 1500, f"{docname}: the page holds only {len(text)} characters of text"


@pytest.mark.parametrize("docname", chapters())
def test_figures_are_image_files(built_book, docname):
    page_path = built_book.page(docname)
    images = _parse(docname).images
    assert len(images) >= EXPECTED_FIGURES[docname], (
        f"{docname}: {len(images)} images, expected at least {EXPECTED_FIGURES[docname]}")
    for src in images:
        assert not re.match(r"(https?:)?//", src), f"{docname}: image from the network: {src}"
        assert not src.startswith("data:"), f"{docname}: inline image instead of a file"
        f = (page_path.parent / src).resolve()
        assert f.is_file() and f.stat().st_size > 0, f"{docname}: image {src} is not a file"


@pytest.mark.parametrize("docname", chapters())
def test_no_error_in_outputs(built_book, docname):
    html = built_book.page(docname).read_text()
    for bad in ("Traceback (most recent call last)", 'class="output traceback',
                'class="output stderr'):
        assert bad not in html, f"{docname}: an output holds {bad!r}"
    # e.g. "UserWarning:" or "KeyError:" printed by a cell. Chapter 3 prints one error on
    # purpose (the library's message for a batch too small to split), as "ValueError: ...".
    # Listings of library code (an ``except OSError:`` in a literalinclude) are not outputs.
    text = _parse(docname).prose_and_outputs
    for m in re.finditer(r"(\w*)(Error|Warning|Exception):", text):
        assert m.group(0) == "ValueError:" and docname == "book/03_four_steps", (
            f"{docname}: unexpected {m.group(0)!r} in ...{text[m.start() - 80:m.end() + 80]}...")


@pytest.mark.parametrize("docname", NUMBERED)
def test_exercises_have_hidden_solutions(built_book, docname):
    page = _parse(docname)
    exercises = sorted(set(re.findall(r"Exercise (\d+\.\d+)", page.text)))
    assert 2 <= len(exercises) <= 4, f"{docname}: {len(exercises)} exercises"
    n = int(docname.split("/")[1][:2])
    assert exercises == [f"{n}.{i}" for i in range(1, len(exercises) + 1)], exercises
    solutions = [d for d in page.dropdowns if d[0]]
    assert len(solutions) == len(exercises), (
        f"{docname}: {len(exercises)} exercises but {len(solutions)} solution dropdowns")
    assert not any(is_open for _, is_open in solutions), f"{docname}: a solution starts open"
    assert all(page.hidden_cells), f"{docname}: a solution code cell is not hidden"
    for e in exercises:
        assert f"Solution {e}" in page.text, f"{docname}: no solution titled 'Solution {e}'"


def _public_library_names():
    names = set()
    for path in (ROOT / "mgpu_lab").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                names.add(node.name)
    return names


def _code_cells(path):
    return re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapters_call_the_library_and_never_redefine_it(path):
    library = _public_library_names()
    cells = _code_cells(path)
    assert cells, f"{path.name} has no code cells"
    assert any("mgpu_lab" in c for c in cells), f"{path.name} never imports mgpu_lab"
    for cell in cells:
        code = "\n".join(l for l in cell.splitlines() if not l.startswith(("%", ":")))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                assert node.name not in library, (
                    f"{path.name} defines {node.name}, which mgpu_lab already has: "
                    f"import it instead")


def _listings():
    """(chapter, file, object) of every literalinclude of library code with :pyobject:."""
    out = []
    for path in sorted(BOOK.glob("*.md")):
        for m in re.finditer(r"```\{literalinclude\} (\S+)\n:pyobject: (\S+)", path.read_text()):
            out.append((path.stem, m.group(1), m.group(2)))
    return out


def test_library_listings_come_from_the_source(built_book):
    listings = _listings()
    assert len(listings) >= 6, listings
    for chapter, file, obj in listings:
        source = (BOOK / file).resolve()
        assert (ROOT / "mgpu_lab") in source.parents, f"{chapter}: {file} is not library code"
        name = obj.split(".")[-1]
        tree = ast.parse(source.read_text())
        defs = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert name in defs, f"{chapter} lists {obj}, which {file} does not define"
        html = (HTML / "book" / f"{chapter}.html").read_text()
        assert re.search(rf'(def|class)</span>(<span class="w"> </span>|\s)*<span class="n[fc]">{name}<',
                         html), (
            f"{chapter}: the listing of {obj} is not on the page")


# -- the bibliography: {cite}`key` in the chapters, book/references.bib, book/references.md
BIB = BOOK / "references.bib"
CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")


def _bibliography():
    """The parsed references.bib (pybtex refuses a file with a key defined twice)."""
    from pybtex.database import parse_file
    return parse_file(str(BIB))


def _citations():
    """{key: [chapter stems that cite it]} over every page of the book."""
    cited = {}
    for path in sorted(BOOK.glob("*.md")):
        for m in CITE.finditer(path.read_text()):
            for key in m.group(1).split(","):
                cited.setdefault(key.strip(), []).append(path.stem)
    return cited


def _plain(text):
    """A BibTeX field as it reads: braces and runs of white space dropped, TeX's
    ``quotes'' as the typographic quotes the style prints."""
    text = text.replace("``", "\u201c").replace("''", "\u201d")
    return re.sub(r"\s+", " ", text.replace("{", "").replace("}", "")).strip()


def test_every_citation_is_in_the_bibliography():
    keys = set(_bibliography().entries)
    cited = _citations()
    assert len(cited) >= 10, f"only {len(cited)} works cited: {sorted(cited)}"
    missing = {k: v for k, v in cited.items() if k not in keys}
    assert not missing, f"cited but not in references.bib: {missing}"


def test_every_gpu_datasheet_is_in_the_bibliography():
    from mgpu_lab.predict.gpus import CATALOGUE
    entries = [(_plain(e.fields.get("title", "")), e.fields.get("year"))
               for e in _bibliography().entries.values()]
    for gpu in CATALOGUE.values():
        m = re.match(r"(.+?), (\d{4})\b", gpu.source)
        assert m, f"{gpu.name}: source {gpu.source!r} is not 'datasheet title, year ...'"
        assert (m.group(1), m.group(2)) in entries, (
            f"{gpu.name}: no entry titled {m.group(1)!r} ({m.group(2)}) in references.bib")


def test_references_page_lists_every_entry(built_book):
    html = built_book.page("book/references").read_text()
    text = _parse("book/references").text
    for key, entry in _bibliography().entries.items():
        assert f'id="cite-{key}"' in html, f"references page: no entry for {key}"
        title = _plain(entry.fields["title"]).split(":")[0].lower()  # the style may recase it
        assert title in text.lower(), f"references page: title of {key} missing"
    # the label each entry has there ([NVIDIA22a]) is the label every citation of it shows
    labels = dict(re.findall(r'id="cite-([^"]+)" role="doc-biblioentry">\s*<span class="label">'
                             r'<span class="fn-bracket">\[</span>([^<]+)<', html))
    assert set(labels) == set(_bibliography().entries), "references page: entries without a label"
    for key, stems in _citations().items():
        for stem in set(stems) - {"references"}:
            page = (HTML / "book" / f"{stem}.html").read_text()
            assert f'references.html#cite-{key}"' in page, (
                f"{stem}: the citation of {key} does not link to the references page")
            shown = set(re.findall(rf'references\.html#cite-{re.escape(key)}"[^>]*>([^<]+)</a>', page))
            assert shown == {labels[key]}, (
                f"{stem}: {key} is cited as {shown}, but the references page labels it {labels[key]}")



def test_the_teachers_guide_shows_the_measured_lab_timings():
    """The guide's timings table is the one data/lab_timings.json (make timings) gives."""
    import json
    import sys
    sys.path.insert(0, str(BOOK / "_ext"))
    import lab_timings
    measured = json.loads((ROOT / "data" / "lab_timings.json").read_text())
    assert measured["kind"] == "measured" and measured["machine"]["cores"] >= 1
    assert set(measured["chapters"]) == {p.stem for p in lab_timings.chapters()}
    assert lab_timings.format_table(measured) in (BOOK / "teachers_guide.md").read_text()


# -- no text output wider than the page ---------------------------------------------------
def _shown_text(output):
    """The text a reader sees of one output as monospace lines: a stream, or plain text
    where no richer form (HTML, an image, a widget) is shown instead."""
    join = lambda t: "".join(t) if isinstance(t, list) else t  # noqa: E731 (nbformat: lines)
    if output.get("output_type") == "stream":
        return join(output.get("text", ""))
    data = output.get("data", {})
    if any(k != "text/plain" for k in data):
        return ""  # HTML, image, widget or glue record: not monospace text
    return join(data.get("text/plain", ""))


def over_width_lines(nb, width=None):
    """(cell index, line) of every shown text output line wider than the page; cells the
    web book removes too, since JupyterLab shows every cell's output."""
    from mgpu_lab.figures.tables import WIDTH  # 88: the theme's text column in monospace
    width = width or WIDTH
    out = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        for output in cell.get("outputs", []):
            out += [(i, line) for line in _shown_text(output).splitlines() if len(line) > width]
    return out


def test_no_text_output_line_is_wider_than_the_page(built_book):
    from test_prose import PAGES, executed_notebook
    found = [f"{page} cell {i} ({len(line)} chars): {line}"
             for page in PAGES for i, line in over_width_lines(executed_notebook(page)[0])]
    assert not found, (f"{len(found)} output lines wider than the page (88 characters; wrap "
                       "them, shorten them or show a table):\n" + "\n".join(found))


def test_the_width_check_reads_streams_and_plain_text_only():
    long = "x " * 50
    nb = {"cells": [
        {"cell_type": "code", "metadata": {}, "outputs": [
            {"output_type": "stream", "name": "stdout", "text": ["short\n", long + "\n"]},
            {"output_type": "execute_result", "data": {"text/plain": long}},
            {"output_type": "display_data", "data": {"text/plain": long, "text/html": "<b/>"}}]},
        {"cell_type": "code", "metadata": {"tags": ["remove-cell"]},  # shown in the lab
         "outputs": [{"output_type": "stream", "name": "stdout", "text": long}]},
        {"cell_type": "markdown", "metadata": {}, "source": long}]}
    assert over_width_lines(nb) == [(0, long), (0, long), (1, long)]
