"""Laptops as they are: where a process cannot be pinned to a core (macOS, Windows), the
library and the book's first chapter still work, unpinned, and say so."""
import os
import re
from pathlib import Path

import numpy as np
import psutil
import pytest

from mgpu_lab.engines import pinning
from mgpu_lab.engines.local import DevicePool
from mgpu_lab.engines.serial import SerialEngine

CHAPTER_1 = Path(__file__).resolve().parents[1] / "book" / "01_how_to_use.md"


@pytest.fixture
def no_pinning(monkeypatch):
    """This process without sched_{set,get}affinity or psutil's cpu_affinity, and worker
    processes told the same through the environment they inherit."""
    for name in ("sched_setaffinity", "sched_getaffinity"):
        monkeypatch.delattr(os, name, raising=False)
    monkeypatch.delattr(psutil.Process, "cpu_affinity", raising=False)
    monkeypatch.setenv("MGPU_NO_PINNING", "1")


def test_without_pinning_the_helpers_say_so(no_pinning):
    assert not pinning.can_pin()
    assert pinning.pin(0) is False
    assert pinning.affinity() is None
    assert pinning.cores() == list(range(os.cpu_count()))
    assert "cannot pin" in pinning.pinning()


@pytest.mark.slow
def test_the_pool_runs_unpinned_and_matches_the_serial_engine(no_pinning, cnn, digits):
    x, y = digits[0][:30], digits[1][:30]
    values = cnn.get_values()
    ref = SerialEngine(cnn, 2).step(values, x, y)
    with DevicePool(cnn.spec, 2) as pool:
        got = pool.step(values, x, y)
        if Path("/proc/self/status").exists():  # Linux: the workers really were not pinned
            allowed = [_cpus_allowed(p) for p in pool.pids()]
            assert allowed == [_cpus_allowed("self")] * 2
    for a, b in zip(ref.grads, got.grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _cpus_allowed(pid):
    """The kernel's own view of a process's allowed cores (independent of the patches)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return re.search(r"Cpus_allowed_list:\s*(\S+)", status).group(1)


def _code_cells(path):
    """The chapter's code cells in order (MyST ```{code-cell}``` blocks), options removed."""
    cells = re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", path.read_text(), re.S)
    return ["\n".join(l for l in c.splitlines() if not l.startswith(":")) for c in cells]


@pytest.mark.slow
def test_chapter_1_set_up_and_exercise_1_2_run_unpinned(no_pinning, capsys):
    cells = _code_cells(CHAPTER_1)
    setup = [c for c in cells if "machine_info()" in c or "DevicePool(model.spec, n_devices=2)" in c
             and "pool2" not in c]
    solution_1_2 = [c for c in cells if "pool2" in c]
    assert len(setup) == 2 and len(solution_1_2) == 1, "chapter 1's set-up cells moved: update this test"
    namespace = {}
    try:
        for code in setup + solution_1_2:
            exec(compile(code, str(CHAPTER_1), "exec"), namespace)
    finally:
        if "pool" in namespace:
            namespace["pool"].close()
    out = capsys.readouterr().out
    assert "cannot pin a process to a core" in out
    assert "cores None" in out  # affinity() says it cannot tell, instead of failing


def test_shared_cores_are_said_next_to_every_measurement(monkeypatch):
    """On a class server whose students share core sets, every measured label says so."""
    from mgpu_lab.measure.machine import machine_info, machine_label
    monkeypatch.delenv("MGPU_CORES_SHARED", raising=False)
    assert "shared" not in machine_label(machine_info())
    monkeypatch.setenv("MGPU_CORES_SHARED", "1")
    info = machine_info()
    assert info["cores_shared"] and ", shared with other students (" in machine_label(info)
