"""The prose against the page's own output: a number the text states must be one the page
computed.

Each chapter is read as executed by the book's build (``_build/jupyter_execute/book/*.ipynb``
and its ``.glue.json``, written by the ``built_book`` fixture's build). Every *quantity* in
the prose, a number with a unit of time, size, rate, share or ratio (``9.4 ms``,
``about 100 MB``, ``23,176 bytes``, ``0.66 %``, ``5.3 times``, ``a millisecond``, ``one to
a few percent``), must be

- glued from the library (``{glue:text}`name```: the build pastes the computed value), or
- equal, to its own precision, to a number the page prints with that unit (or, for numbers
  of two or more significant digits, in a table cell without a unit), or to a glue value;
  words such as "about" or "≈" allow 5 %; "under a millisecond" is a quantity like any
  other (1 ms) and must be printed too, or
- on the page's short, explicit :data:`ALLOWED` list: numbers that are not outputs
  (datasheet figures quoted with their source, inputs the text chooses, timings of the
  build itself).

A ratio (``N times``, ``×N``) must moreover be *visible* in the page's printed output, glued
or not: a comparison the reader cannot find on the page cannot be checked by the reader.

Exercise statements are exempt (their numbers are the data the exercise gives); their
solutions are not.

``python tests/test_prose.py NOTEBOOK.ipynb...`` runs the same check on notebooks executed
elsewhere (e.g. ``jupytext --to ipynb --execute``), and prints every claim it cannot trace.
"""
import json
import math
import re
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bookbuild import BUILD, ROOT, built_book, chapters  # noqa: E402,F401  (fixture)

# Units, as they are written in prose and in printed output, and the one name each maps to.
_UNITS = [  # case matters: "S" is a size, "s" a second
    (r"ms|milliseconds?", "ms"), (r"µs|us|microseconds?", "µs"), (r"s|seconds?", "s"),
    (r"min|minutes?", "min"), (r"%|percent", "%"), (r"times|×|x", "×"),
    (r"GB/s", "GB/s"), (r"MB/s", "MB/s"), (r"TFLOP/s|TF|TFLOPS", "TF"), (r"GFLOP", "GFLOP"),
    (r"GiB", "GiB"), (r"MiB", "MiB"), (r"KiB", "KiB"), (r"GB", "GB"), (r"MB", "MB"),
    (r"kB", "kB"), (r"images/s", "images/s"), (r"bytes", "bytes"),
]
_UNIT_RE = "|".join(f"(?:{u})" for u, _ in _UNITS)
_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
          "seven": 7, "eight": 8, "nine": 9, "ten": 10, "twelve": 12, "twenty": 20,
          "fifty": 50, "hundred": 100}
_MULT = {"thousand": 1e3, "million": 1e6, "billion": 1e9}
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_WORD = r"(?i:\b(?:" + "|".join(_WORDS) + r")\b)"
_APPROX = re.compile(r"(?:about|≈|~|roughly|nearly|almost|around|some)\s*$", re.I)
# "<number or word> [million] <unit>", a range "<n> to <n> <unit>", "×<n>" or "<n>×"
_QUANTITY = re.compile(
    rf"(?<![\w.])(?P<first>{_NUM}|{_WORD})(?:\s*(?:to|–)\s*(?:a\s+few|{_NUM}|{_WORD}))?"
    rf"(?:\s*(?P<mult>thousand|million|billion))?(?P<space>\s*)(?P<unit>{_UNIT_RE})(?![\w/])")
_TIMES_BEFORE = re.compile(rf"×\s*(?P<first>{_NUM})\b")
# "N times" is a ratio when a comparison follows ("times as fast", "times PCIe 3.0"), not
# when it counts ("called three times in this process")
_RATIO_NEXT = re.compile(r"\s+(?:as|larger|smaller|more|fewer|less|faster|slower|longer|"
                         r"shorter|higher|lower|bigger|greater|the|that|what|its|their|one|"
                         r"[A-Z])")
_GLUE = re.compile(r"\{glue:text\}`(?P<name>[^`]+)`")

# Numbers the prose may state that no output prints, page by page: each entry is a piece of
# the sentence it stands in (so that it allows that one claim, not the number everywhere).
ALLOWED = {
    "01_how_to_use": ["(e.g. 16 GiB)"],  # an example of a GPU's memory, in a table of terms
    "03_four_steps": ["4 bytes each in float32"],  # the size of a float32: a definition
    "06_throughput": ["100 % is perfect",  # a definition
                      "a few seconds to a minute"],  # how long the widget takes: not computed
    "07_batch_limits": ["of 16 GiB.", "256 KiB"],  # the V100's datasheet memory; the capacity chosen
    "12_beyond": ["about 90 % scaling efficiency"],  # Goyal et al.'s published figure, cited
    "08_collectives": ["8.8 · 10 µs · 25 GB/s"],  # the latency and link exercise 8.3 gives
    "10_communication": [
        "with up to 100 MB",  # mpi-bench's largest size by default (a CLI default, not a result)
        "= 4P = 100 MB",  # the gradient size exercise 10.1 gives
    ],
    "09_sharding": [  # Adam's two float32 arrays per parameter, and exercise 9.3's own model
        "32 GB over N GPUs", "only Adam's 8 bytes",
        "still holds 8 bytes per parameter",
        "(2 bytes each) and 12 bytes",  # the ZeRO paper's mixed-precision count, cited
    ],
    "11_cost_model": [
        "8.74 TFLOPS for the board", "instead of 19.5 TFLOPS",  # datasheet peaks, cited
        "(2,039 GB/s on", "3.35 TB/s on the H100",  # datasheet memory bandwidths, cited
        "= 5.34 TFLOP/s, which is", "speed: 5.34 TFLOP/s / 92.8",  # solution 11.1's arithmetic
    ],
}


@dataclass(frozen=True)
class Claim:
    value: float
    unit: str
    approx: bool
    text: str  # the words around it, for the message
    glued: str | None = None  # glue name, for a glued ratio
    said: str = ""  # the quantity as written, e.g. "about 100 MB"

    @property
    def digits(self):
        m = re.search(r"\d[\d,]*(?:\.(\d+))?", self.said)
        return len(m.group(1) or "") if m else 0


def _unit(word):
    for pattern, name in _UNITS:
        if re.fullmatch(pattern, word):
            return name
    return None


def _value(token, mult=None):
    token = token.lower()
    v = _WORDS[token] if token in _WORDS else float(token.replace(",", ""))
    return v * _MULT.get((mult or "").lower(), 1)


# -- prose ------------------------------------------------------------------------------
def _strip_markup(line):
    """One line of MyST prose without code, math, citations, links' targets, references."""
    line = re.sub(r"`[^`]*`", " ", line)  # inline code (glue roles are replaced before)
    line = re.sub(r"\{(?:cite|numref|ref|doc)\}` ?", " ", line)
    line = re.sub(r"\$[^$]*\$", " ", line)
    line = re.sub(r"\]\([^)]*\)", "]", line)  # [text](target) -> [text]
    line = re.sub(r"\b(?:[Cc]hapters?|[Ee]xercises?|[Ss]olution|[Ss]tep|[Ss]ection)\s+[\d.]+", " ",
                  line)
    return line


def prose_blocks(markdown):
    """The prose lines of a markdown cell, without directive options, code fences, exercise
    statements (their numbers are given data) and markup."""
    out, fence, exempt = [], None, 0
    for raw in markdown.splitlines():
        line = raw.strip()
        if fence:
            if line.startswith(fence):
                fence = None
            continue
        if line.startswith("```") and not line.startswith("```{figure}"):
            fence = "```"
            continue
        if re.match(r":{3,}\{admonition\} Exercise", line):
            exempt = len(re.match(r":+", line).group(0))
            continue
        if exempt:
            if re.fullmatch(":" * exempt, line):
                exempt = 0
            continue
        if line.startswith(":") or line.startswith("```") or line.startswith("#"):
            continue  # directive options and fences, headings
        out.append(line)
    return " ".join(out)


def claims_in(text):
    """Every quantity stated in ``text`` (prose with its glue roles still in place)."""
    found = []
    for m in _GLUE.finditer(text):  # a glued ratio: "{glue:text}`r` times as", "(× {glue...})"
        after = text[m.end():m.end() + 60]
        times = re.match(r"\s*times", after)
        if (times and _RATIO_NEXT.match(after[times.end():])) or re.match(r"\s*×", after) \
                or re.search(r"×\s*$", text[:m.start()]):
            found.append(Claim(math.nan, "×", False, text[max(0, m.start() - 40):m.end() + 40],
                               m.group("name"), m.group(0)))
    plain = _GLUE.sub(" GLUED ", text)
    plain = _strip_markup(plain)
    for m in _QUANTITY.finditer(plain):
        unit = _unit(m.group("unit"))
        first = m.group("first")
        if unit is None or (first.lower() in ("a", "an") and unit in ("%", "×")):
            continue
        if m.group("unit")[0].isalpha() and not m.group("space") and unit != "×":
            continue  # "2s" in a formula; prose writes "2 s"
        if m.group("unit") == "x" or (m.group("unit") == "×" and re.match(
                r"\s*[\dA-Zα-ωΑ-Ω(]", plain[m.end():])):
            continue  # "4 x 2", "28 × 28", "2 × N" and "2 × (N − 1)" are products
        if m.group("unit") == "times" and not _RATIO_NEXT.match(plain[m.end():]):
            continue  # "three times in this process": a count
        if first.lower() in ("a", "an") and not re.match(r"(?:milli|micro)seconds?$|minutes?$",
                                                          m.group("unit")):
            continue  # "a millisecond" is a quantity; "a second reason" and "a ms" are not
        prefix = plain[max(0, m.start() - 14):m.start()]
        if re.search(r"[×·*/]\s*$", prefix):
            continue  # a factor of worked arithmetic ("553 × 4 bytes = ..."): its result is checked
        found.append(Claim(_value(first, m.group("mult")), unit, bool(_APPROX.search(prefix)),
                           plain[max(0, m.start() - 40):m.end() + 20].strip(), None,
                           m.group(0)))
    for m in _TIMES_BEFORE.finditer(plain):
        if re.search(r"[\w)]\s*$", plain[:m.start()]):
            continue  # "2 × 4", "e × 15.7": a product
        found.append(Claim(_value(m.group("first")), "×", False,
                           plain[max(0, m.start() - 40):m.end() + 20].strip(), None, m.group(0)))
    return found


# -- output -----------------------------------------------------------------------------
class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts = []

    def handle_data(self, data):
        self.parts.append(data)


def _output_text(output):
    """The text a reader sees of one output (stream, plain text or an HTML table)."""
    join = lambda t: "".join(t) if isinstance(t, list) else t  # noqa: E731 (nbformat: lines)
    if output.get("output_type") == "stream":
        return join(output.get("text", ""))
    data = output.get("data", {})
    if "text/html" in data:
        parser = _Text()
        parser.feed(join(data["text/html"]))
        return " ".join(parser.parts)
    return join(data.get("text/plain", ""))


def _glue_outputs(output):
    data = output.get("data", {})
    return {k: v for k, v in data.items() if k.startswith("application/papermill.record/")}


def page_evidence(nb, glue_json=None):
    """(visible: [(value, unit or None)], glue: {name: text}) of an executed notebook."""
    visible, glue = [], dict(glue_json or {})
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tags = set(cell.get("metadata", {}).get("tags", []))
        hidden = bool(tags & {"remove-cell", "remove-output"})
        for out in cell.get("outputs", []):
            record = _glue_outputs(out)
            if record:
                name = out.get("metadata", {}).get("scrapbook", {}).get("name")
                text = record.get("application/papermill.record/text/plain", "")
                glue[name] = ("".join(text) if isinstance(text, list) else str(text)).strip("'\"")
                continue
            if not hidden:
                visible += numbers_in(_output_text(out))
    for name, value in list(glue.items()):
        if isinstance(value, dict):  # .glue.json: {name: {"data": {mime: text}}}
            text = value.get("data", {}).get("text/plain", "")
            glue[name] = ("".join(text) if isinstance(text, list) else str(text)).strip("'\"")
    return visible, glue


def numbers_in(text):
    """(value, unit or None) of every number printed in ``text``; "x5.3" and "5.3x" are
    ratios."""
    found = []
    number = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?"
    for m in re.finditer(rf"(?<![\w.])(?:x|×)\s*(?P<n>{number})", text):
        found.append((float(m.group("n").replace(",", "")), "×"))
    for m in re.finditer(rf"(?<![\w.])(?P<n>{number})(?:\s*(?P<u>{_UNIT_RE})(?![\w/]))?", text):
        unit = _unit(m.group("u")) if m.group("u") else None
        found.append((float(m.group("n").replace(",", "")), unit))
    return found


def _close(claim, value):
    if value == 0 or math.isnan(claim.value):
        return claim.value == value
    rel = abs(claim.value - value) / abs(value)
    if claim.approx:
        return rel <= 0.05
    return abs(claim.value - value) <= 0.5 * 10 ** -claim.digits * 1.0001 and rel <= 0.05


def _significant(claim):
    return len(re.sub(r"^0+", "", re.sub(r"\D", "", f"{claim.value:g}"))) >= 2


def untraced(nb, page, glue_json=None, allowed=None):
    """The claims of ``nb``'s prose that its output does not support (messages)."""
    visible, glue = page_evidence(nb, glue_json)
    glue_numbers = [float(v.replace(",", "")) for v in glue.values()
                    if re.fullmatch(r"-?[\d,]+(?:\.\d+)?", str(v))]
    allowed = ALLOWED.get(page, []) if allowed is None else allowed
    problems = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        text = prose_blocks("".join(cell["source"]))
        for claim in claims_in(text):
            if any(a in claim.text and claim.said in a for a in allowed):  # that claim only
                continue
            if claim.glued:  # a glued ratio must be visible in the printed output
                value = str(glue.get(claim.glued, "")).replace(",", "")
                try:
                    v = float(value)
                except ValueError:
                    problems.append(f"ratio glued from {claim.glued!r} is not a number: {value!r}")
                    continue
                shown = Claim(v, "×", False, value)
                if not any(_close(shown, o) for o, u in visible if u in ("×", None)):
                    problems.append(f"ratio {value} (glue {claim.glued!r}) is printed nowhere on "
                                    f"the page: «{claim.text}»")
                continue
            candidates = [o for o, u in visible if u == claim.unit]
            if _significant(claim):
                candidates += [o for o, u in visible if u is None]
                if claim.unit != "×":
                    candidates += glue_numbers
            if not any(_close(claim, o) for o in candidates):
                problems.append(f"{claim.value:g} {claim.unit} is neither glued nor printed on "
                                f"the page: «{claim.text}»")
    return problems


# -- the test ---------------------------------------------------------------------------
PAGES = [c.split("/", 1)[1] for c in chapters() if re.match(r"book/\d\d_", c)]
EXECUTED = BUILD / "jupyter_execute" / "book"


def executed_notebook(page):
    """The page's notebook with its outputs. With ``execute_notebooks: cache`` myst-nb writes
    ``jupyter_execute/<page>.ipynb`` without them (they live in jupyter-cache, matched by the
    code cells' content) and the glue values in ``<page>.glue.json``."""
    import nbformat
    path = EXECUTED / f"{page}.ipynb"
    assert path.exists(), f"the build wrote no executed notebook {path}"
    nb = nbformat.read(str(path), as_version=4)
    if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        from jupyter_cache import get_cache
        _, nb = get_cache(str(BUILD / ".jupyter_cache")).merge_match_into_notebook(nb)
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{page}: no outputs, neither in {path} nor in the build's jupyter-cache")
    glue_path = EXECUTED / f"{page}.glue.json"
    return nb, (json.loads(glue_path.read_text()) if glue_path.exists() else None)


@pytest.mark.book
@pytest.mark.parametrize("page", PAGES)
def test_prose_states_only_numbers_the_page_computes(built_book, page):
    nb, glue = executed_notebook(page)
    problems = untraced(nb, page, glue)
    assert problems == [], f"{page}: prose numbers the page does not compute:\n" + "\n".join(problems)


# -- the checker checks (no build needed) ------------------------------------------------
def _nb(prose, printed, glue=None):
    cells = [{"cell_type": "markdown", "source": prose, "metadata": {}},
             {"cell_type": "code", "source": "", "metadata": {},
              "outputs": [{"output_type": "stream", "name": "stdout", "text": printed}]}]
    return {"cells": cells}, {k: {"data": {"text/plain": repr(v)}} for k, v in (glue or {}).items()}


@pytest.mark.parametrize("prose, printed, ok", [
    ("The model predicts well under a millisecond for either.", "host 1.17 ms, ring 0.35 ms", False),
    ("The model predicts 1.17 ms for the host.", "host 1.17 ms, ring 0.35 ms", True),
    ("The plain mean is wrong by one to a few percent.", "N = 2: plain mean 6.6e-03", False),
    ("It takes about 100 MB.", "P = 25,557,032 parameters: 102 MB of gradients", True),
    ("It takes 100 MB.", "P = 25,557,032 parameters: 102 MB of gradients", False),
    ("a ring over PCIe takes ≈ 9.4 ms", "ring over PCIe 9.38 ms", True),
    ("5.3 times less than the host gather", "algorithm (same PCIe links): x5.3", True),
    ("5.3 times less than the host gather", "algorithm (same PCIe links): x4.9", False),
    ("138 × 4 bytes = 552 bytes of weights", "weights: 552 bytes", True),  # factors: inputs
    ("138 × 4 bytes = 600 bytes of weights", "weights: 552 bytes", False),  # result: checked
])
def test_the_checker_catches_what_the_output_contradicts(prose, printed, ok):
    nb, glue = _nb(prose, printed)
    assert (untraced(nb, "page", glue, allowed=[]) == []) is ok


def test_a_glued_ratio_must_be_visible_in_the_output():
    prose = "The H100 computes {glue:text}`r` times as fast as a V100."
    nb, glue = _nb(prose, "H100 67.0 TF, V100 15.7 TF; compute 3.7x", {"r": "4.3"})
    assert untraced(nb, "page", glue, allowed=[])  # 4.3 is printed nowhere: caught
    nb, glue = _nb(prose, "peak 4.3x; compute 3.7x", {"r": "4.3"})
    assert untraced(nb, "page", glue, allowed=[]) == []


def test_exercise_statements_and_allowed_claims_are_exempt():
    prose = ":::{admonition} Exercise 9.9: x\n:class: tip\nWith 25 GB/s links...\n:::\n"
    nb, glue = _nb(prose, "nothing")
    assert untraced(nb, "page", glue, allowed=[]) == []
    nb, glue = _nb("PCIe 3.0 gives 16 GB/s per direction.", "nothing")
    assert untraced(nb, "page", glue, allowed=[])
    assert untraced(nb, "page", glue, allowed=["16 GB/s"]) == []


if __name__ == "__main__":  # check notebooks executed elsewhere
    bad = 0
    for arg in sys.argv[1:]:
        found = re.search(r"\d\d_\w+", Path(arg).stem)  # e.g. /tmp/x-08_collectives.ipynb
        page = found.group(0) if found else Path(arg).stem
        problems = untraced(json.loads(Path(arg).read_text()), page)
        print(f"{arg} ({page}): {len(problems)} untraced")
        for p in problems:
            print("   ", p)
        bad += bool(problems)
    sys.exit(1 if bad else 0)
