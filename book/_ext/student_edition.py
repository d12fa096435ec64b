"""The student edition: the book without its solutions, as a web book and as notebooks.

    python book/_ext/student_edition.py [OUT [BUILD]]  (``make student``; OUT: _build/student,
                                                       BUILD: the teacher's _build)

derives it from the teacher's build (``make book``), without executing anything again:

    OUT/src/            a build tree: each chapter is the teacher build's *executed*
                        notebook (BUILD/jupyter_execute/book/*.ipynb, outputs and glued
                        numbers included) with every solution removed; pages without
                        code are their MyST source, stripped the same way
    OUT/html/           the web book built from it, with execution off
    OUT/notebooks/      one .ipynb per chapter for students to run: exercises kept,
                        solutions gone, no outputs

The book is executed once per library change (the teacher's build, cached by
``mgpu_lab.sources.library_hash``); this edition only filters and renders what it produced.

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
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml

__all__ = ["strip_solutions", "unlink_teacher_pages", "strip_notebook", "write_sources",
           "chapter_texts", "write_notebooks",
           "build", "TEACHER_ONLY"]

ROOT = Path(__file__).resolve().parents[2]
TEACHER_BUILD = ROOT / "_build"
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


def _student_text(text):
    return unlink_teacher_pages(strip_solutions(text))


def strip_notebook(nb):
    """An executed notebook without solution code cells, and its markdown cells without
    solution dropdowns and teacher-only text (a dropdown never spans cells: MyST cannot
    hold a code cell inside a directive)."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code" and "solution" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "markdown":
            cell.source = _student_text(cell.source + "\n").rstrip("\n")
        cells.append(cell)
    nb.cells = cells
    return nb


def _with_prefix(output):
    """A glued output as myst-nb reads it from a notebook: every mime key carries the
    scrapbook prefix (``application/papermill.record/``), which glue.json has stripped."""
    prefix = output.get("metadata", {}).get("scrapbook", {}).get("mime_prefix", "")
    data = {k if k.startswith(prefix) else prefix + k: v for k, v in output["data"].items()}
    return {**output, "data": data}


def _restore_glue(nb, glue_json):
    """Put back the values the chapter glued (``myst_nb.glue``). myst-nb takes them out of
    the executed notebook into ``<chapter>.glue.json``; the student build, which executes
    nothing, reads them from the notebook's outputs: one removed cell at the end holds
    them (removed from the page; a value glued by a solution is shown by nothing)."""
    if not glue_json.exists():
        return
    outputs = [nbformat.from_dict(_with_prefix(o)) for o in json.loads(glue_json.read_text()).values()]
    cell = nbformat.v4.new_code_cell("# the values this chapter glued (myst_nb.glue)",
                                     metadata={"tags": ["remove-cell"]}, outputs=outputs)
    nb.cells.append(cell)


def _student_toc(toc):
    """The table of contents without the teacher-only pages (and empty parts)."""
    parts = []
    for part in toc["parts"]:
        kept = [c for c in part["chapters"] if c["file"] not in TEACHER_ONLY]
        if kept:
            parts.append({**part, "chapters": kept})
    return {**toc, "parts": parts}


def _is_chapter(page):
    return "kernelspec:" in page.read_text()


def write_sources(out, teacher_build=TEACHER_BUILD):
    """``out/src``: the book's build tree with the solutions stripped; each chapter is the
    teacher build's executed notebook. Returns (src, {chapter: its stripped MyST text})."""
    src, executed = Path(out) / "src", Path(teacher_build) / "jupyter_execute" / "book"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(ROOT / "book", src / "book", ignore=shutil.ignore_patterns(
        "*.ipynb", ".ipynb_checkpoints", *[Path(p).name + ".md" for p in TEACHER_ONLY]))
    texts = {}
    for page in sorted((src / "book").glob("*.md")):
        texts[page.stem] = _student_text(page.read_text())
        if not _is_chapter(page):
            page.write_text(texts.pop(page.stem))
            continue
        done = executed / f"{page.stem}.ipynb"
        if not done.exists():
            raise FileNotFoundError(
                f"the teacher's build has no executed notebook {done}: the student edition is "
                "derived from it; build the book first (make book)")
        nb = strip_notebook(nbformat.read(done, as_version=4))
        _restore_glue(nb, done.with_name(f"{page.stem}.glue.json"))
        nbformat.write(nb, page.with_suffix(".ipynb"))
        page.unlink()  # the chapter is now its executed notebook
    for name in ("mgpu_lab", "data"):  # literalinclude and data paths point here
        os.symlink(ROOT / name, src / name)
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    (src / "_toc.yml").write_text(yaml.safe_dump(_student_toc(toc), sort_keys=False))
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["title"] = f"{config.get('title', '')} (student edition)"
    config.setdefault("execute", {})["execute_notebooks"] = "off"  # outputs are the teacher's
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return src, texts


def chapter_texts():
    """{chapter: its MyST text without solutions}, from the book's sources: what the
    student notebooks hold (unexecuted), without a teacher build."""
    return {p.stem: _student_text(p.read_text()) for p in sorted((ROOT / "book").glob("*.md"))
            if _is_chapter(p)}


def write_notebooks(texts, out):
    """One unexecuted .ipynb per chapter, from its stripped MyST text (jupytext)."""
    target = Path(out) / "notebooks"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for stem, text in texts.items():
        jupytext.write(jupytext.reads(text, fmt="md:myst"), target / f"{stem}.ipynb")
    return sorted(target.glob("*.ipynb"))


def build(out=ROOT / "_build" / "student", teacher_build=TEACHER_BUILD,
          flags=("-W", "-n", "--keep-going")):
    """Sources, notebooks and the web book of the student edition, from the teacher's
    executed build (nothing is executed)."""
    out = Path(out)
    src, texts = write_sources(out, teacher_build)
    notebooks = write_notebooks(texts, out)
    jb = Path(sys.executable).with_name("jupyter-book")
    subprocess.run([str(jb), "build", str(src), "--path-output", str(out / "work"), *flags],
                   check=True)
    if (out / "html").exists():
        shutil.rmtree(out / "html")
    shutil.move(str(out / "work" / "_build" / "html"), str(out / "html"))
    return out / "html", notebooks


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:3]]
    html, nbs = build(*args)
    print(f"student edition: {html / 'index.html'} and {len(nbs)} notebooks in {nbs[0].parent}")
