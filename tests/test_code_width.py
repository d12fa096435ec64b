"""Every line of the book's code fits the page: a code cell's line is at most
``tables.WIDTH`` (88) characters, the web book's monospace column, so that no code block
scrolls sideways and a JupyterLab reader sees the code as written. Hidden and removed
cells too: JupyterLab shows every cell."""
from pathlib import Path

import jupytext
import pytest

from mgpu_lab.figures.tables import WIDTH

BOOK = Path(__file__).resolve().parents[1] / "book"
PAGES = sorted(p for p in BOOK.glob("*.md") if "kernelspec:" in p.read_text())


def too_wide(path, width=WIDTH):
    """(cell number, line) of every code line of the MyST notebook ``path`` wider than
    ``width``."""
    cells = [c for c in jupytext.read(path).cells if c.cell_type == "code"]
    return [(i, line) for i, c in enumerate(cells) for line in c.source.splitlines()
            if len(line) > width]


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
