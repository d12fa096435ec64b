"""One hash of the library (``mgpu_lab.sources.library_hash``) decides what every cache
holds: the book's execution cache, the tests' book-build stamp, the explorers' grids."""
import shutil
import sys

from mgpu_lab import sources
from mgpu_lab.figures import explorers

from bookbuild import ROOT, sources_digest


def _copy(tmp_path):
    lib, data = tmp_path / "mgpu_lab", tmp_path / "data"
    shutil.copytree(sources.LIBRARY_DIR, lib, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(sources.DATA_DIR, data)
    return lib, data


def test_the_hash_changes_with_any_edit_addition_rename_or_data_change(tmp_path):
    lib, data = _copy(tmp_path)
    h0 = sources.library_hash(lib, data)
    assert h0 == sources.library_hash() and len(h0) == 64  # a copy hashes the same
    (lib / "__pycache__").mkdir(exist_ok=True)
    (lib / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")  # not a source
    assert sources.library_hash(lib, data) == h0
    seen = {h0}
    steps = [lambda: (lib / "split.py").write_text((lib / "split.py").read_text() + "\n"),
             lambda: (lib / "predict" / "new.py").write_text(""),
             lambda: (lib / "predict" / "new.py").rename(lib / "predict" / "newer.py"),
             lambda: (data / "published_throughput.csv").write_text("x\n")]
    for step in steps:
        step()
        h = sources.library_hash(lib, data)
        assert h not in seen
        seen.add(h)


def test_every_cache_uses_the_one_hash(monkeypatch, tmp_path):
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import mgpu_book
    assert mgpu_book.library_hash is sources.library_hash
    assert explorers.library_hash is sources.library_hash
    monkeypatch.setenv("MGPU_CACHE_DIR", str(tmp_path))
    book, grid = sources_digest(), explorers._cache_path("k", [1])
    monkeypatch.setattr(sources, "library_hash", lambda *a: "0" * 64)
    monkeypatch.setattr(explorers, "library_hash", sources.library_hash)
    import bookbuild
    monkeypatch.setattr(bookbuild, "library_hash", sources.library_hash)
    assert sources_digest() != book and explorers._cache_path("k", [1]) != grid
