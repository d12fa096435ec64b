"""An nbgrader course from the book's exercises: one assignment per chapter.

    python book/_ext/assignments.py [OUT]        (``make assignments``; OUT: _build/course)

writes OUT/nbgrader_config.py and OUT/source/<chapter>/<chapter>.ipynb for every chapter
with an exercise that checks itself (mgpu_lab.exercises.ANSWERS), then runs nbgrader's
``generate_assignment`` on each, which writes the students' version to OUT/release/.

A chapter's notebook is its student edition (book/_ext/student_edition.py: solution
dropdowns and solution code cells removed) in which each ``check("X.Y", answer)`` cell
becomes two nbgrader cells:

- an **answer cell** (``solution``): the expected answer between nbgrader's
  ``### BEGIN SOLUTION`` and ``### END SOLUTION`` markers, computed by the library like
  ``check()``'s own (the teacher's source only: ``generate_assignment`` replaces it by
  ``raise NotImplementedError()`` in the release);
- a locked **test cell** (``grade``, with points): ``check("X.Y", answer, grading=True)``,
  which raises on a wrong or missing answer and never shows the expected one.

Points: one per number asked for (a list of 4 split sizes: 4 points).
"""
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import student_edition  # noqa: E402

from mgpu_lab.exercises import ANSWERS  # noqa: E402

__all__ = ["chapters", "solution_code", "points", "assignment", "nbgrader_env", "write_course"]

# Answers that depend on the machine that runs them: the solution is code, not a value.
SOLUTION_CODE = {"1.1": "import os\nanswer = len(os.sched_getaffinity(0))"}
CONFIG = """# nbgrader's configuration for the course written by book/_ext/assignments.py
c = get_config()  # noqa: F821
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = "mgpu_lab"
c.ExecutePreprocessor.timeout = 600  # a chapter's cells compile and train: minutes, not 30 s
import os, sys  # noqa: E401,E402  (no cell waits its whole timeout for a reply there)
if os.path.exists({ext!r} + "/kernel_poll.py"):  # not if the project moved
    sys.path.insert(0, {ext!r})
    __import__("kernel_poll").install()
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE: answer = ...\\nraise NotImplementedError()"}}
"""


def chapters():
    """Chapter stems with an exercise that checks itself, in book order."""
    return sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.md")
                  if 'check("' in p.read_text())


def _plain(value):
    """Python literals for numpy values (repr must be valid, exact Python)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def solution_code(exercise):
    return SOLUTION_CODE.get(exercise) or f"answer = {_plain(ANSWERS[exercise].expected())!r}"


def points(exercise):
    value = ANSWERS[exercise].expected()
    return len(value) if isinstance(value, (list, tuple)) else 1


def _meta(grade_id, solution, grade, pts=None):
    meta = {"grade": grade, "solution": solution, "locked": not solution,
            "grade_id": grade_id, "schema_version": 3}
    if pts is not None:
        meta["points"] = pts
    return {"nbgrader": meta}


def _graded_cells(exercise):
    ident = exercise.replace(".", "_")
    a = ANSWERS[exercise]
    answer = nbformat.v4.new_code_cell(
        f"# Exercise {exercise}: your answer ({a.shape}) in `answer`.\n"
        f"answer = None  # not the previous exercise's answer\n### BEGIN SOLUTION\n{solution_code(exercise)}\n### END SOLUTION",
        metadata=_meta(f"answer_{ident}", True, False))
    test = nbformat.v4.new_code_cell(
        f"# Exercise {exercise}, graded ({points(exercise)} points): raises if `answer` is "
        f"not right.\nfrom mgpu_lab.exercises import check\n\n"
        f"check({exercise!r}, answer, grading=True)",
        metadata=_meta(f"check_{ident}", False, True, points(exercise)))
    return [answer, test]


def _exercise_of(cell):
    for ex in ANSWERS:
        if cell.cell_type == "code" and f'check("{ex}", answer)' in cell.source:
            return ex
    return None


def assignment(chapter):
    """The chapter's nbgrader source notebook (module doc)."""
    text = (ROOT / "book" / f"{chapter}.md").read_text()
    text = student_edition.unlink_teacher_pages(student_edition.strip_solutions(text))
    nb = jupytext.reads(text, fmt="md:myst")
    cells = []
    for cell in nb.cells:
        ex = _exercise_of(cell)
        cells.extend(_graded_cells(ex) if ex else [cell])
    nb.cells = cells
    nb.metadata.pop("jupytext", None)
    return nb


def nbgrader_env():
    """nbgrader runs ``alembic`` and its kernels by name: .venv/bin first on PATH."""
    bin_ = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ.get('PATH', '')}"}


def write_course(out, only=None, release=True):
    """OUT/source/<chapter>/<chapter>.ipynb for each chapter (``only``: a subset), the
    config, and (``release``) nbgrader's students' version in OUT/release."""
    out = Path(out).resolve()
    names = only or chapters()
    unknown = sorted(set(names) - set(chapters()))
    if unknown:
        raise ValueError(f"no exercise checks itself in {unknown}; chapters with one: "
                         f"{', '.join(chapters())}")
    (out / "source").mkdir(parents=True, exist_ok=True)
    (out / "nbgrader_config.py").write_text(CONFIG.format(
        root=str(out), ext=str(Path(__file__).resolve().parent)))
    for chapter in names:
        folder = out / "source" / chapter
        folder.mkdir(exist_ok=True)
        nbformat.write(assignment(chapter), folder / f"{chapter}.ipynb")
        if release:
            nbgrader = Path(sys.executable).with_name("nbgrader")
            r = subprocess.run([str(nbgrader), "generate_assignment", chapter, "--force"],
                               cwd=out, capture_output=True, text=True, env=nbgrader_env())
            if r.returncode:
                raise RuntimeError(f"nbgrader generate_assignment {chapter} failed:\n"
                                   f"{r.stderr[-3000:]}")
    return [out / "source" / c / f"{c}.ipynb" for c in names]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "_build" / "course"
    made = write_course(target)
    print(f"nbgrader course: {target} ({len(made)} assignments: "
          f"{', '.join(p.stem for p in made)}); the students' version is in {target}/release")
    print(f"grade: cd {target} && nbgrader autograde ASSIGNMENT (the teacher's guide)")
