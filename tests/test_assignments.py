"""``make assignments``: an nbgrader course from the book's exercises, graded for real.

Writes chapter 3's assignment, runs nbgrader's ``generate_assignment``, lets a "student"
answer exercise 3.1 right and 3.2 wrong (3.3 left as released), runs ``autograde`` and
reads the gradebook: full points for 3.1, zero for 3.2 and 3.3. The released notebook
must hold no solution: no 60-character fingerprint of a solution dropdown or solution
cell of the teacher's chapter (as tests/test_student.py checks the student edition), and
none of the answers between nbgrader's solution markers.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import assignments  # noqa: E402
import student_edition  # noqa: E402

from mgpu_lab.exercises import check  # noqa: E402

CHAPTER = "03_four_steps"


def _norm(text):
    return " ".join(text.split())


def _fingerprints(text):
    """First 60 characters (whitespace normalised) of each solution in a MyST chapter:
    dropdown words and solution-cell code, without their directive options."""
    blocks = [m.group(0) for m in student_edition._DROPDOWN.finditer(text)]
    blocks += [m.group(0) for m in student_edition._CELL.finditer(text)
               if student_edition._is_solution_cell(m.group(0))]
    bodies = ["\n".join(line for line in b.splitlines()[1:-1] if not line.startswith(":"))
              for b in blocks]
    return {_norm(b)[:60] for b in bodies if _norm(b)}


def test_grading_mode_raises_on_a_wrong_answer_and_never_shows_the_right_one(capsys):
    assert check("3.1", [3, 3, 2, 2], grading=True) is True
    for wrong in ([2, 2, 3, 3], None):
        with pytest.raises(AssertionError) as e:
            check("3.1", wrong, grading=True)
        assert "3, 3, 2, 2" not in str(e.value) and "3.1" in str(e.value)
    assert "3, 3, 2, 2" not in capsys.readouterr().out


def test_an_unknown_chapter_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no exercise checks itself in"):
        assignments.write_course(tmp_path, only=["05_training"], release=False)
    assert not (tmp_path / "source" / "05_training").exists()


def _nbgrader(course, *args):
    r = subprocess.run([str(Path(sys.executable).with_name("nbgrader")), *args], cwd=course,
                       capture_output=True, text=True, env=assignments.nbgrader_env(),
                       timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


@pytest.mark.hub
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_nbgrader_releases_no_solution_and_grades_right_and_wrong(tmp_path):
    course = tmp_path / "course"
    assignments.write_course(course, only=[CHAPTER])  # runs generate_assignment
    released = course / "release" / CHAPTER / f"{CHAPTER}.ipynb"
    nb = json.loads(released.read_text())
    text = _norm(" ".join("".join(c["source"]) for c in nb["cells"]))
    prints = _fingerprints((ROOT / "book" / f"{CHAPTER}.md").read_text())
    assert len(prints) >= 6, "chapter 3's solutions changed shape"
    assert [p for p in prints if p in text] == []
    solutions = [_norm(assignments.solution_code(e)) for e in ("3.1", "3.2", "3.3")]
    assert [s for s in solutions if s in text] == []
    assert text.count("raise NotImplementedError()") == 3
    cells = {c["metadata"].get("nbgrader", {}).get("grade_id"): c for c in nb["cells"]}
    assert {k: cells[k]["metadata"]["nbgrader"]["points"]
            for k in ("check_3_1", "check_3_2", "check_3_3")} == {
                "check_3_1": 4, "check_3_2": 1, "check_3_3": 1}

    cells["answer_3_1"]["source"] = "answer = [3, 3, 2, 2]\n"  # right
    cells["answer_3_2"]["source"] = "answer = 1\n"  # wrong
    submitted = course / "submitted" / "ann" / CHAPTER
    submitted.mkdir(parents=True)
    (submitted / released.name).write_text(json.dumps(nb))
    _nbgrader(course, "autograde", CHAPTER, "--force")

    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        got = {k: (gb.find_grade(k, CHAPTER, CHAPTER, "ann").score,
                   gb.find_grade(k, CHAPTER, CHAPTER, "ann").max_score)
               for k in ("check_3_1", "check_3_2", "check_3_3")}
    assert got == {"check_3_1": (4, 4), "check_3_2": (0, 1), "check_3_3": (0, 1)}
    shutil.rmtree(tmp_path, ignore_errors=True)
