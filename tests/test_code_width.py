"""Every line of the book's code fits the page: a code cell's line is at most
``tables.WIDTH`` (88) characters, the web book's monospace column, so that no code block
scrolls sideways and a JupyterLab reader sees the code as written. Hidden and removed
cells too: JupyterLab shows every cell. The same for the code blocks of the prose
(```bash and the like, on every page), which the reader copies."""
import re
from pathlib import Path

import jupytext
import pytest

from mgpu_lab.figures.tables import WIDTH

BOOK = Path(__file__).resolve().parents[1] / "book"
PAGES = sorted(p for p in BOOK.glob("*.md") if "kernelspec:" in p.read_text())
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(.*)$")


def too_wide(path, width=WIDTH):
    """(cell number, line) of every code line of the MyST notebook ``path`` wider than
    ``width``."""
    cells = [c for c in jupytext.read(path).cells if c.cell_type == "code"]
    return [(i, line) for i, c in enumerate(cells) for line in c.source.splitlines()
            if len(line) > width]


def too_wide_in_blocks(text, width=WIDTH):
    """Lines wider than ``width`` inside the fenced code blocks of markdown ``text``
    (```bash, ```python, plain ```; not MyST directives such as ```{note}, whose body is
    prose, nor code cells, which :func:`too_wide` reads)."""
    found, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and fence is None:
            fence = m.groups()
        elif m and line.strip() == fence[0]:
            fence = None
        elif fence and not fence[1].startswith("{") and len(line) > width:
            found.append(line)
    return found


def test_the_check_finds_a_wide_line(tmp_path):
    header = (BOOK / "04_checking_the_maths.md").read_text().split("\n---\n")[0]
    page = tmp_path / "p.md"
    page.write_text(f"{header}\n---\n\n```{{code-cell}} ipython3\nx = 1\n"
                    f"y = '{'a' * WIDTH}'\n```\n")
    assert too_wide(page) == [(0, f"y = '{'a' * WIDTH}'")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_no_code_line_is_wider_than_the_page(page):
    found = too_wide(page)
    assert not found, (f"{page.name}: {len(found)} code lines wider than {WIDTH} characters; "
                       "break them inside brackets:\n"
                       + "\n".join(f"  code cell {i}: {line}" for i, line in found))


def test_the_block_check_reads_code_blocks_not_directives():
    wide = "x" * (WIDTH + 1)
    text = f"{wide}\n```bash\nok\n{wide}\n```\n\n```{{note}}\n{wide}\n```\n"
    assert too_wide_in_blocks(text) == [wide]


@pytest.mark.parametrize("page", sorted(BOOK.glob("*.md")), ids=lambda p: p.stem)
def test_no_code_block_line_in_the_prose_is_wider_than_the_page(page):
    found = too_wide_in_blocks(page.read_text())
    assert not found, (f"{page.name}: {len(found)} lines of code blocks wider than {WIDTH} "
                       "characters (break shell commands with a backslash):\n"
                       + "\n".join(found))
