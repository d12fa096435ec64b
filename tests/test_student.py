"""The student edition (``make student``): no solution anywhere, every exercise kept, and
nothing executed a second time.

Derives the edition once from the teacher's build (the ``built_book`` fixture) with
book/_ext/student_edition.py, as ``make student`` does, and compares the two: the first
60 characters of every solution in the teacher's pages (words and code, whitespace
normalised) appear in no student page and no student notebook, and every exercise title
appears in both. The measured benchmark of chapter 6 (different on every run) is the same
in both editions: the student's outputs are the teacher's, not a second execution.
"""
import html as htmllib
import json
import re
import sys
from html.parser import HTMLParser

import pytest

from bookbuild import BUILD, HTML, ROOT, built_book  # noqa: F401  (fixture)

sys.path.insert(0, str(ROOT / "book" / "_ext"))
import student_edition  # noqa: E402

pytestmark = [pytest.mark.book, pytest.mark.timeout(1800)]
STUDENT = ROOT / "_build" / "student"


class _Solutions(HTMLParser):
    """Text of solution dropdowns and solution code cells; exercise titles."""

    def __init__(self):
        super().__init__()
        self.solutions, self.titles, self._depth, self._title = [], [], [], False

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        opens = (tag == "details" and "solution" in classes) or \
                (tag == "div" and "tag_solution" in classes)
        if self._depth:
            self._depth[-1][0] += 1
        if opens:
            self._depth.append([1, []])
        self._title = tag == "p" and "admonition-title" in classes

    def handle_endtag(self, tag):
        if self._depth:
            self._depth[-1][0] -= 1
            if self._depth[-1][0] == 0:
                self.solutions.append(" ".join("".join(self._depth.pop()[1]).split()))
        self._title = False

    def handle_data(self, data):
        if self._depth:
            self._depth[-1][1].append(data)
        if self._title and data.strip().startswith("Exercise"):
            self.titles.append(" ".join(data.split()))


def _norm(text):
    return " ".join(text.split())


@pytest.fixture(scope="module")
def student(built_book):
    html, notebooks = student_edition.build(STUDENT, BUILD)
    return html, notebooks


def _teacher_pages():
    pages = {}
    for page in sorted(HTML.glob("book/*.html")):
        parser = _Solutions()
        parser.feed(page.read_text())
        pages[page.name] = parser
    return pages


def test_strip_solutions_keeps_exercises_and_drops_solutions():
    text = ("intro\n<!-- teacher -->each has a solution\n<!-- /teacher -->\n"
            ":::{admonition} Exercise 1.1: a\n:class: tip\nQ?\n:::\n\n"
            "::::{dropdown} Solution 1.1\n:class-container: solution\n\nA!\n::::\n\n"
            "```{code-cell} ipython3\n:tags: [hide-cell, solution]\n\nprint(42)\n```\n\n"
            "```{code-cell} ipython3\n:tags: [hide-input]\n\nprint(1)\n```\n")
    out = student_edition.strip_solutions(text)
    assert "Exercise 1.1: a" in out and "Q?" in out and "print(1)" in out
    assert "A!" not in out and "print(42)" not in out and "each has a solution" not in out
    linked = "The [teacher's guide](teachers_guide) has a plan; [chapter 2](02_why_more_gpus)."
    assert student_edition.unlink_teacher_pages(linked) == (
        "The teacher's guide has a plan; [chapter 2](02_why_more_gpus).")


def test_no_solution_reaches_a_student_and_every_exercise_does(built_book, student):
    html, notebooks = student
    teacher = _teacher_pages()
    snippets = {_norm(s)[:60] for p in teacher.values() for s in p.solutions if _norm(s)}
    titles = [t for p in teacher.values() for t in p.titles]
    assert len(snippets) >= 20 and len(titles) >= 20, "the teacher's pages changed shape"
    student_pages = {p.name: _norm(htmllib.unescape(re.sub(r"<[^>]+>", " ", p.read_text())))
                     for p in html.glob("book/*.html")}
    student_nbs = {p.name: _norm(" ".join("".join(c["source"]) for c in
                                          json.loads(p.read_text())["cells"]))
                   for p in notebooks}
    leaks = [(name, s) for name, text in {**student_pages, **student_nbs}.items()
             for s in snippets if s in text]
    assert leaks == []
    everything = " ".join(student_pages.values())
    assert [t for t in titles if t not in everything] == []
    assert "teachers_guide.html" not in student_pages
    chapters = [p.stem for p in (ROOT / "book").glob("*.md") if "kernelspec:" in p.read_text()
                and f"book/{p.stem}" not in student_edition.TEACHER_ONLY]
    assert sorted(p.stem for p in notebooks) == sorted(chapters)


def _measured(page):
    m = re.search(r'<div class="mgpu-measured".*?</table>', page.read_text(), re.S)
    assert m, f"{page}: no measured block"
    return m.group(0)


def test_the_student_edition_shows_the_teachers_outputs_without_executing(student):
    html, _ = student
    page = "book/06_throughput.html"
    assert _measured(html / page) == _measured(HTML / page)  # one run, measured once
    assert not (STUDENT / "work" / "_build" / ".jupyter_cache").exists()
    assert sorted(p.name for p in (STUDENT / "src" / "book").glob("*.ipynb")) == sorted(
        p.name for p in (BUILD / "jupyter_execute" / "book").glob("*.ipynb")
        if f"book/{p.stem}" not in student_edition.TEACHER_ONLY)


def _printed(page):
    """The text of each printed (stream) block on a built page, whitespace normalised."""
    blocks = re.findall(r'<div class="output stream[^"]*"><div class="highlight"><pre>(.*?)</pre>',
                        page.read_text(), re.S)
    return [_norm(htmllib.unescape(re.sub(r"<[^>]+>", "", b))) for b in blocks]


def test_the_student_pages_print_only_what_the_teachers_print(student):
    """Each printed block of a student page is one of the teacher's page (a block printed
    twice over, as myst-nb's in-place stream merging once left the executed notebooks, is not)."""
    html, _ = student
    pages = sorted(html.glob("book/*.html"))
    assert len(pages) >= 10
    for page in pages:
        teacher = set(_printed(HTML / "book" / page.name))
        extra = [b[:300] for b in _printed(page) if b not in teacher]
        assert extra == [], f"{page.name}: printed blocks the teacher's page does not show: {extra}"


def test_a_missing_teacher_build_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="build the book first"):
        student_edition.write_sources(tmp_path / "out", tmp_path / "no-build")
