"""What the library's results depend on, as one hash: everything that caches uses it.

The book's execution cache (``book/_ext/mgpu_book.py``), the test suite's book-build stamp
(``tests/bookbuild.py``) and the explorers' grids on disk (:mod:`mgpu_lab.figures.explorers`)
must all go stale together when the library changes, and only then; one function decides.
"""
import hashlib
from pathlib import Path

__all__ = ["LIBRARY_DIR", "DATA_DIR", "library_files", "library_hash"]

LIBRARY_DIR = Path(__file__).resolve().parent  # mgpu_lab/
DATA_DIR = LIBRARY_DIR.parent / "data"  # the data the library reads (mgpu_lab.data)


def library_files(library_dir=LIBRARY_DIR, data_dir=DATA_DIR):
    """The library's Python files (subpackages too) and its data files, sorted."""
    code = [p for p in Path(library_dir).rglob("*.py") if "__pycache__" not in p.parts]
    data = [p for p in Path(data_dir).rglob("*") if p.is_file()] if Path(data_dir).is_dir() else []
    return sorted(code) + sorted(data)


def library_hash(library_dir=LIBRARY_DIR, data_dir=DATA_DIR):
    """SHA-256 (hex) over the names, relative to the repository, and contents of
    :func:`library_files`: equal exactly when no file was added, removed, renamed or edited."""
    root = Path(library_dir).parent
    h = hashlib.sha256()
    for path in library_files(library_dir, data_dir):
        name = path.relative_to(root) if path.is_relative_to(root) else path.name
        h.update(str(name).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()
