"""The student edition: the book without its solutions, as a web book and as notebooks.

    python book/_ext/student_edition.py [OUT]        (``make student``; OUT: _build/student)

writes

    OUT/src/            the book's sources with every solution removed (a build tree)
    OUT/html/           the web book built from them (executed, like ``make book``)
    OUT/notebooks/      one .ipynb per chapter: exercises kept, solutions gone

A solution is, in a chapter's MyST source, a ``::::{dropdown} Solution X.Y`` block (its
words) and every code cell tagged ``solution`` (its code). Both are removed; exercises
keep their numbers and titles. Text between ``<!-- teacher -->`` and ``<!-- /teacher -->``
(e.g. "each exercise has a worked solution") is removed too, and the teacher's guide is
left out of the student edition.

Why not sphinx-exercise's ``hide_solutions``: it drops the ``solution`` directive from the
HTML, but a solution's code lives in notebook cells beside it (MyST cannot nest a code
cell inside a directive), which would still run and show, and the notebooks need the same
filter anyway. One filter on the sources serves the web book and the notebooks alike.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import yaml

__all__ = ["strip_solutions", "unlink_teacher_pages", "write_sources", "build", "TEACHER_ONLY"]

ROOT = Path(__file__).resolve().parents[2]
TEACHER_ONLY = ("book/teachers_guide",)  # pages students do not get
_DROPDOWN = re.compile(r"^(:{4,})\{dropdown\} Solution\b.*?^\1[ \t]*\n", re.S | re.M)
_TEACHER = re.compile(r"<!-- teacher -->.*?<!-- /teacher -->[ \t]*\n?", re.S)
_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(?::[^\n]*\n)*.*?^```[ \t]*\n", re.S | re.M)


def _is_solution_cell(cell):
    tags = re.search(r"^:tags:\s*\[(.*?)\]", cell, re.M)
    return bool(tags) and "solution" in [t.strip().strip("'\"") for t in tags.group(1).split(",")]


def strip_solutions(text):
    """A chapter's MyST source without its solution dropdowns and solution code cells."""
    text = _TEACHER.sub("", _DROPDOWN.sub("", text))
    text = _CELL.sub(lambda m: "" if _is_solution_cell(m.group(0)) else m.group(0), text)
    return re.sub(r"\n{3,}", "\n\n", text)


def unlink_teacher_pages(text):
    """Links to a teacher-only page become their plain text (the page is not there)."""
    names = "|".join(re.escape(p.split("/")[-1]) for p in TEACHER_ONLY)
    return re.sub(rf"\[([^\]]+)\]\((?:{names})(?:\.md)?(?:#[^)]*)?\)", r"\1", text)


def _student_toc(toc):
    """The table of contents without the teacher-only pages (and empty parts)."""
    parts = []
    for part in toc["parts"]:
        kept = [c for c in part["chapters"] if c["file"] not in TEACHER_ONLY]
        if kept:
            parts.append({**part, "chapters": kept})
    return {**toc, "parts": parts}


def write_sources(out):
    """``out/src``: a copy of the book's build tree with the solutions stripped."""
    src = Path(out) / "src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(ROOT / "book", src / "book",
                    ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    for page in (src / "book").glob("*.md"):
        page.write_text(unlink_teacher_pages(strip_solutions(page.read_text())))
    for page in TEACHER_ONLY:
        (src / f"{page}.md").unlink(missing_ok=True)
    for name in ("mgpu_lab", "data"):  # literalinclude and data paths point here
        os.symlink(ROOT / name, src / name)
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    (src / "_toc.yml").write_text(yaml.safe_dump(_student_toc(toc), sort_keys=False))
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["title"] = f"{config.get('title', '')} (student edition)"
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return src


def _notebooks(src, out):
    """One unexecuted .ipynb per chapter of the student sources (jupytext)."""
    target = Path(out) / "notebooks"
    target.mkdir(parents=True, exist_ok=True)
    pages = sorted(p for p in (src / "book").glob("*.md") if "kernelspec:" in p.read_text())
    for page in pages:
        jupytext.write(jupytext.read(page), target / f"{page.stem}.ipynb")
    return sorted(target.glob("*.ipynb"))


def build(out=ROOT / "_build" / "student", flags=("-W", "-n", "--keep-going")):
    """Sources, notebooks and the executed web book of the student edition."""
    out = Path(out)
    src = write_sources(out)
    notebooks = _notebooks(src, out)
    jb = Path(sys.executable).with_name("jupyter-book")
    subprocess.run([str(jb), "build", str(src), "--path-output", str(out / "work"), *flags],
                   check=True)
    if (out / "html").exists():
        shutil.rmtree(out / "html")
    shutil.move(str(out / "work" / "_build" / "html"), str(out / "html"))
    return out / "html", notebooks


if __name__ == "__main__":
    html, nbs = build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "_build" / "student")
    print(f"student edition: {html / 'index.html'} and {len(nbs)} notebooks in {nbs[0].parent}")
