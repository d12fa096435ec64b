"""Sphinx extension for the book: keep executed chapters in step with the library.

myst-nb caches a chapter's outputs by the chapter's own text. The chapters call
``mgpu_lab``, so when the library changes an unchanged chapter would still show the
outputs of the old code. This extension

* makes every page depend on the library's source files (Sphinx re-reads a page when one
  of them is newer than the last build), and
* empties the execution cache when the library's content changed since the last build
  (a SHA-256 over ``mgpu_lab/**/*.py`` kept beside the cache), so re-read pages execute again.
"""
import hashlib
import shutil
from pathlib import Path

__all__ = ["setup", "library_digest", "LIBRARY_DIR"]

LIBRARY_DIR = Path(__file__).resolve().parents[2] / "mgpu_lab"
_STAMP = "mgpu_lab.sha256"


def library_digest(library_dir=LIBRARY_DIR):
    """SHA-256 over the names and contents of the library's Python files."""
    h = hashlib.sha256()
    for path in sorted(Path(library_dir).rglob("*.py")):  # subpackages too
        h.update(str(path.relative_to(library_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _cache_dir(app):
    configured = getattr(app.config, "nb_execution_cache_path", "")
    return Path(configured) if configured else Path(app.outdir).parent / ".jupyter_cache"


def _clear_stale_cache(app, config):
    """Empty the execution cache if it was filled by a different library."""
    cache, digest = _cache_dir(app), library_digest()
    stamp = cache.parent / _STAMP  # beside the cache, so clearing the cache keeps the rule
    if stamp.exists() and stamp.read_text().strip() == digest:
        return
    if cache.exists():
        print(f"mgpu_book: mgpu_lab changed since the last build; emptying {cache}")
        shutil.rmtree(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")


def _depend_on_library(app, docname, source):
    for path in sorted(LIBRARY_DIR.rglob("*.py")):
        app.env.note_dependency(str(path))


def setup(app):
    app.connect("config-inited", _clear_stale_cache)
    app.connect("source-read", _depend_on_library)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
