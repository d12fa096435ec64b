"""Exercises that check themselves: for every one, a right answer passes, a wrong one gets
its hint, and the expected answer is never printed. The book calls ``check`` for exactly
the exercises that have an answer to check."""
import re
from pathlib import Path

import pytest

from mgpu_lab.exercises import ANSWERS, check, checked_exercises, is_right

BOOK = Path(__file__).resolve().parents[1] / "book"


def _wrong(value):
    """A plausible wrong answer: off by half, or the list with its first entry changed."""
    if isinstance(value, list):
        return [_wrong(value[0])] + list(value[1:])
    return value * 1.5 + 1


def _printed_forms(value):
    """How the expected answer could appear in printed text (single digits are left out:
    a hint may say "10 = 4 x 2 + 2" without giving [3, 3, 2, 2] away)."""
    values = value if isinstance(value, list) else [value]
    forms = {repr(value)}
    for v in values:
        forms |= {repr(v), f"{v:,}" if isinstance(v, int) else f"{v:.3g}"}
    return {f for f in forms if len(f) > 1}


@pytest.mark.parametrize("exercise", checked_exercises())
def test_a_right_answer_passes(exercise, capsys):
    right = ANSWERS[exercise].expected()
    assert check(exercise, right) is True
    assert "right" in capsys.readouterr().out


@pytest.mark.parametrize("exercise", checked_exercises())
def test_a_wrong_answer_gets_the_hint_and_not_the_answer(exercise, capsys):
    right = ANSWERS[exercise].expected()
    assert check(exercise, _wrong(right)) is False
    out = capsys.readouterr().out
    assert "not yet" in out and ANSWERS[exercise].hint in out
    leaked = [f for f in _printed_forms(right) if f in out]
    assert leaked == [], f"check({exercise!r}) printed the expected answer: {leaked}"


@pytest.mark.parametrize("exercise", checked_exercises())
def test_tolerances_are_what_they_say(exercise):
    a = ANSWERS[exercise]
    right = a.expected()
    if a.rel_tol == 0:
        return
    nudge = lambda v, f: [nudge(x, f) for x in v] if isinstance(v, list) else v * f  # noqa: E731
    assert is_right(exercise, nudge(right, 1 + a.rel_tol / 2))
    assert not is_right(exercise, nudge(right, 1 + 3 * a.rel_tol))


def test_no_answer_yet_and_bad_input(capsys):
    assert check("3.1", None) is False
    assert "write your answer" in capsys.readouterr().out
    assert check("3.1", "three") is False  # not a list: a clear "not yet", no exception
    assert check("3.1", [3, 3, 2]) is False  # wrong length
    with pytest.raises(ValueError, match="does not check itself; those that do: 1.1"):
        check("99.9", 1)


def test_the_book_calls_check_for_exactly_the_checked_exercises():
    calls = {m for p in BOOK.glob("*.md") for m in re.findall(r'check\("(\d+\.\d+)"', p.read_text())}
    assert sorted(calls, key=lambda k: tuple(map(int, k.split(".")))) == checked_exercises()


def test_the_teachers_guide_lists_the_exercises_that_check_themselves():
    guide = (BOOK / "teachers_guide.md").read_text()
    section = guide.split("## Exercises that check themselves", 1)[1].split("\n## ", 1)[0]
    assert ", ".join(checked_exercises()) in section
    assert f"{len(checked_exercises())} of the book's exercises" in section


def test_exercise_10_4_uses_all_six_nvlinks_as_the_question_says():
    from mgpu_lab.predict import costmodel, critical
    from mgpu_lab.predict.gpus import get_gpu
    v100 = get_gpu("V100")
    c = costmodel.calibration_for(v100, "fp32")
    rate = v100.peak(c["peak_precision"]) * c["efficiency"]
    assert ANSWERS["10.4"].expected() == pytest.approx(4 / 3 * rate / v100.peer_bw)
    # one ring of 8 in a DGX-1 (50 of the 150 GB/s) is a different quantity: 3 times b*
    assert not is_right("10.4", critical.critical_batch(rate, v100.ring_bw(8)))
    assert "peer_bw" in ANSWERS["10.4"].hint
