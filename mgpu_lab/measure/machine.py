"""What machine a measurement came from: every saved result and measured figure says it."""
import csv
import json
import os
import platform
import sys
from pathlib import Path

import numpy

from .._theano import theano
from ..engines.pinning import cores, cores_shared

__all__ = ["machine_info", "machine_label", "save_result", "save_data", "load_data"]


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """CPU model, usable cores, memory and library versions, as a JSON-able dict."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    return {"cpu": _cpu_model(), "cores": len(cores()), "cores_shared": cores_shared(),
            "memory_bytes": mem, "platform": platform.platform(),
            "python": sys.version.split()[0], "numpy": numpy.__version__,
            "theano": theano.__version__}


def machine_label(info=None):
    """A one-line provenance label for figure captions: 'measured on <cpu>, <n> cores'."""
    info = info or machine_info()
    shared = ", shared with other students" if info.get("cores_shared") else ""
    return (f"measured on {info['cpu']}, {info['cores']} cores{shared} (simulated devices = "
            f"CPU processes)")


def save_result(result, out_dir, prefix, extra):
    """Write ``<prefix>-<timestamp>.json`` (all of ``result``) and ``.csv`` (one line per
    ``result["rows"]`` entry, the ``extra`` columns -- machine, versions -- on every line).

    Returns (json path, csv path, the path stem for files that go beside them).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = result["created"].replace(":", "").replace("-", "").replace("T", "-")
    base = out / f"{prefix}-{stamp}"
    json_path, csv_path = base.with_suffix(".json"), base.with_suffix(".csv")
    json_path.write_text(json.dumps(result, indent=1))
    fields = list(dict.fromkeys(k for r in result["rows"] for k in r)) + list(extra)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in result["rows"]:
            w.writerow({**r, **extra})
    return json_path, csv_path, base


def save_data(result, path):
    """Write ``result`` as JSON to ``path`` (a file the book reads from ``data/``), atomically:
    a half-written file never replaces a whole one."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    return path


def load_data(path, remake):
    """The JSON that :func:`save_data` wrote; a missing file says how to make it
    (``remake``: the command that writes it)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {remake} writes it")
    return json.loads(path.read_text())
