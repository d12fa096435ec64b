"""Build the book once per test session, the way ``make book`` does, unless an
up-to-date successful build already exists.

"Up to date" is decided by content, not by file times: a successful build writes a stamp
(``_build/.book-build-ok``) holding a SHA-256 over everything the book is made from: the
chapters and their assets in ``book/``, ``_config.yml``, ``_toc.yml``, and the library as
:func:`mgpu_lab.sources.library_hash` sees it (the one library hash every cache uses).
A failed build writes no stamp, so the next session builds again and reports the failure
again. The build log goes to ``_build/book-build.log``.

``MGPU_BOOK_BUILD=/path/to/_build`` makes the tests use that finished build as it is (its
``html/`` folder), without building: for a build made elsewhere, e.g. with
``jupyter-book build . --path-output /tmp/x`` (then ``MGPU_BOOK_BUILD=/tmp/x/_build``).
"""
import functools
import hashlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mgpu_lab.sources import library_hash

__all__ = ["ROOT", "BUILD", "HTML", "LOG", "EXISTING_BUILD", "BookBuild", "chapters",
           "book_flags", "sources_digest",
           "build_book", "start_in_background", "stop_background", "built_book"]

ROOT = Path(__file__).resolve().parents[1]
EXISTING_BUILD = os.environ.get("MGPU_BOOK_BUILD")  # a finished build to use as it is
BUILD = Path(EXISTING_BUILD).resolve() if EXISTING_BUILD else ROOT / "_build"
HTML = BUILD / "html"
LOG = BUILD / "book-build.log"
STAMP = BUILD / ".book-build-ok"
DEFAULT_FLAGS = "-W -n --keep-going"  # as the Makefile's BOOK_FLAGS
BUILD_TIMEOUT_S = 1500  # a cold build on 2 cores takes a few minutes; this is a hang guard


@dataclass(frozen=True)
class BookBuild:
    returncode: int  # 0: the build succeeded (no cell error, no Sphinx warning)
    log: str  # the tail of jupyter-book's output
    rebuilt: bool  # False when an up-to-date successful build was reused
    seconds: float

    def page(self, docname):
        return HTML / f"{docname}.html"


def chapters():
    """Docnames of every page in the table of contents, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    names = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        names += [c["file"] for c in part["chapters"]]
    return [re.sub(r"\.(md|ipynb)$", "", n) for n in names]


def book_flags():
    """The Makefile's BOOK_FLAGS (so the test builds exactly like ``make book``)."""
    makefile = ROOT / "Makefile"
    if makefile.exists():
        m = re.search(r"^BOOK_FLAGS\s*:?=\s*(.*)$", makefile.read_text(), re.M)
        if m:
            return m.group(1).split()
    return DEFAULT_FLAGS.split()


def _book_files():
    book = [p for p in (ROOT / "book").rglob("*") if p.is_file()
            and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts]
    return sorted(book + [ROOT / "_config.yml", ROOT / "_toc.yml"])


def sources_digest():
    """The book's own files, and the library through its one hash."""
    h = hashlib.sha256(library_hash().encode() + b"\0")
    for path in _book_files():
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _up_to_date(digest):
    return (STAMP.exists() and STAMP.read_text().strip() == digest
            and all((HTML / f"{c}.html").exists() for c in chapters()))


@functools.lru_cache(maxsize=None)
def build_book():
    """Build (or reuse) the book; returns a :class:`BookBuild`. Memoised per process."""
    import time
    if EXISTING_BUILD:
        missing = [c for c in chapters() if not (HTML / f"{c}.html").exists()]
        note = f"MGPU_BOOK_BUILD={EXISTING_BUILD}: pages missing there: {missing}"
        return BookBuild(1 if missing else 0, note if missing else "", False, 0.0)
    digest = sources_digest()
    if _up_to_date(digest):
        return BookBuild(0, LOG.read_text()[-6000:] if LOG.exists() else "", False, 0.0)
    exe = Path(sys.executable).with_name("jupyter-book")
    launcher = [str(exe)] if exe.exists() else [
        sys.executable, "-c", "from jupyter_book.cli.main import main; main()"]
    cmd = [*launcher, "build", str(ROOT), *book_flags()]
    BUILD.mkdir(exist_ok=True)
    STAMP.unlink(missing_ok=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A session of its own, so that stop_background() can end the build with its kernels.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    _running.append(proc)
    try:
        out, _ = proc.communicate(timeout=BUILD_TIMEOUT_S)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        _stop(proc)
        code, out = -1, f"{proc.communicate()[0]}\nTIMEOUT after {BUILD_TIMEOUT_S} s"
    finally:
        _running.remove(proc)
    seconds = time.perf_counter() - t0
    LOG.write_text(f"$ {' '.join(cmd)}\n{out}")
    if code == 0:
        STAMP.write_text(digest + "\n")
    return BookBuild(code, out[-6000:], True, seconds)


_background = []  # the one Future of a build started early (start_in_background)
_running = []  # the jupyter-book process while it runs


def _stop(proc):
    """End a build's process group (jupyter-book and what it started), politely first."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            pass


def stop_background():
    """Stop a build still running when the session ends early (-x, Ctrl-C, a crash): the
    build never outlives the test session that started it."""
    for proc in list(_running):
        _stop(proc)


def start_in_background():
    """Start the build (or its reuse check) on a thread now, so that it runs while the tests
    that do not need it run; :func:`built_book` then waits for it. Called once per session
    by tests/conftest.py when a selected test needs the book."""
    if not _background:
        import concurrent.futures
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="book-build")
        _background.append(pool.submit(build_book))
        pool.shutdown(wait=False)  # the thread ends with the build


@pytest.fixture(scope="session")
def built_book():
    """The built book; fails (with the build's log) if the build did not succeed."""
    result = _background[0].result() if _background else build_book()
    if result.returncode != 0:
        pytest.fail(f"`jupyter-book build . {' '.join(book_flags())}` failed "
                    f"(exit {result.returncode}); full log in {LOG}. Its end:\n{result.log}",
                    pytrace=False)
    return result
