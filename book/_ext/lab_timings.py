"""How long each chapter takes to run top to bottom as a notebook, cold and warm.

    python book/_ext/lab_timings.py [OUT.json]      (``make timings``)

Each chapter (a MyST notebook in book/) is converted with jupytext and executed with
nbclient on the project's kernel, twice: first with empty caches (cold: what a laptop sees
on its first run; ``MGPU_THEANO_DIR`` points Theano's compile cache, and
``MGPU_CACHE_DIR`` the explorers' grids, at a fresh folder), then again with the caches
that run filled (warm: every later run). The result, with the
machine it was measured on, is written as JSON (default ``data/lab_timings.json``) and
printed as a table for the teacher's guide.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from mgpu_lab.measure.machine import machine_info, machine_label  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_poll  # noqa: E402

__all__ = ["chapters", "run_chapter", "measure", "format_table"]


def chapters():
    """The book's notebooks, in file order."""
    return sorted(p for p in (ROOT / "book").glob("*.md") if "kernelspec:" in p.read_text())


def run_chapter(path, timeout=1800):
    """Seconds to execute chapter ``path`` top to bottom (in book/, as the book build does)."""
    kernel_poll.install()  # a lost reply would add a cell's whole timeout to its time
    nb = jupytext.read(path)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - t0


def measure(pages=None):
    """{chapter: {"cold_s", "warm_s"}} with a fresh Theano cache, then the same cache."""
    pages = pages or chapters()
    rows = {p.stem: {} for p in pages}
    with tempfile.TemporaryDirectory(prefix="mgpu-cold-") as cache:
        os.environ["MGPU_THEANO_DIR"] = os.path.join(cache, "theano")  # the kernels inherit
        os.environ["MGPU_CACHE_DIR"] = os.path.join(cache, "explorers")  # both folders
        for kind in ("cold_s", "warm_s"):
            for p in pages:
                rows[p.stem][kind] = round(run_chapter(p), 1)
                print(f"{p.stem:<24} {kind[:4]} {rows[p.stem][kind]:7.1f} s", flush=True)
    return rows


def format_table(result):
    """A Markdown table: chapter, cold and warm minutes, and the totals."""
    lines = ["| chapter | cold (first run) | warm (later runs) |", "| --- | ---: | ---: |"]
    for name, r in result["chapters"].items():
        lines.append(f"| {name} | {r['cold_s']:.0f} s | {r['warm_s']:.0f} s |")
    total = {k: sum(r[k] for r in result["chapters"].values()) for k in ("cold_s", "warm_s")}
    lines.append(f"| **all** | **{total['cold_s'] / 60:.1f} min** | **{total['warm_s'] / 60:.1f} min** |")
    later = "".join(f" ({name}: {date})" for name, date in result.get("measured_later", {}).items())
    return "\n".join(lines) + f"\n\n{result['machine_label']}; {result['created']}{later}"


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "lab_timings.json"
    result = {"kind": "measured", "created": time.strftime("%Y-%m-%d"),
              "machine": machine_info(), "machine_label": machine_label(),
              "how": "book/_ext/lab_timings.py: each chapter executed with nbclient, cold "
                     "(empty Theano and explorer caches) then warm", "chapters": measure()}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(format_table(result))
