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
    assert "CPUs None" in out  # affinity() says it cannot tell, instead of failing


def test_shared_cores_are_said_next_to_every_measurement(monkeypatch):
    """On a class server whose students share core sets, every measured label says so."""
    from mgpu_lab.measure.machine import machine_info, machine_label
    monkeypatch.delenv("MGPU_CORES_SHARED", raising=False)
    assert "shared" not in machine_label(machine_info())
    monkeypatch.setenv("MGPU_CORES_SHARED", "1")
    info = machine_info()
    assert info["cores_shared"] and ", shared with other students (" in machine_label(info)


# -- hardware threads (SMT): a fake /sys tree, not this machine's ------------------------
def _fake_sysfs(tmp_path, monkeypatch, cores_of_cpus, allowed=None, files=("core_cpus_list",)):
    """A /sys/devices/system/cpu tree where ``cores_of_cpus`` lists each physical core's
    logical CPUs, and this process allowed on ``allowed`` (default: all of them)."""
    for sibs in cores_of_cpus:
        text = ",".join(map(str, sibs)) + "\n"
        for cpu in sibs:
            topo = tmp_path / f"cpu{cpu}" / "topology"
            topo.mkdir(parents=True)
            for name in files:
                (topo / name).write_text(text)
    every = sorted(c for sibs in cores_of_cpus for c in sibs)
    monkeypatch.setattr(pinning, "SYS_CPU", str(tmp_path))
    monkeypatch.delenv("MGPU_NO_PINNING", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(allowed or every), raising=False)
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: None, raising=False)


def test_the_cpu_list_format_is_read_as_linux_writes_it():
    assert pinning._parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert pinning._parse_cpu_list("5") == [5]


def test_hyperthreads_numbered_as_linux_on_intel_four_cores_two_threads(tmp_path, monkeypatch):
    _fake_sysfs(tmp_path, monkeypatch, [(0, 4), (1, 5), (2, 6), (3, 7)])
    assert pinning.smt_known()
    assert pinning.cores() == [0, 1, 2, 3, 4, 5, 6, 7]  # 8 logical CPUs: threads
    assert pinning.physical_cores() == [0, 1, 2, 3] and pinning.physical_core_count() == 4
    assert pinning.sharing_a_core(4) == []
    assert pinning.sharing_a_core(6) == [(0, 4), (1, 5)]  # devices 4, 5 on CPUs 4, 5
    note = pinning.topology_note(6).splitlines()
    assert note == ["8 logical CPUs on 4 physical cores (the other 4 are further threads of "
                    "those cores)",
                    "6 devices; these share a core (shared, not independent):",
                    "  devices 0 and 4: one core's hardware threads (CPUs 0, 4)",
                    "  devices 1 and 5: one core's hardware threads (CPUs 1, 5)"]
    assert pinning.topology_note(4).endswith("\n4 device(s): each on a core of its own")
    assert all(len(line) < 90 for n in (None, 4, 6, 9) for line in
               pinning.topology_note(n).splitlines())  # fits the page
    assert "devices 0 and 8: take turns on CPU 0" not in pinning.topology_note(9)  # 0, 4, 8
    assert "  devices 0 and 4 and 8: one core's hardware threads (CPUs 0, 4)" in \
        pinning.topology_note(9)


def test_adjacent_siblings_are_used_one_per_core_first(tmp_path, monkeypatch):
    """Where a core's threads are numbered next to each other (0-1, 2-3, ...), sorted CPUs
    would put devices 0 and 1 on one core; the pool's order puts them on two."""
    _fake_sysfs(tmp_path, monkeypatch, [(0, 1), (2, 3), (4, 5)],
                files=("thread_siblings_list",))  # the name before Linux 5.7
    assert pinning.cores() == [0, 2, 4, 1, 3, 5]
    assert pinning.physical_cores() == [0, 2, 4]
    assert pinning.sharing_a_core(3) == []
    assert pinning.sharing_a_core(4) == [(0, 3)]
    assert pinning.sharing_a_core(7) == [(0, 3, 6), (1, 4), (2, 5)]


def test_an_affinity_mask_counts_only_the_cores_it_allows(tmp_path, monkeypatch):
    """A class server gives a student CPUs {1, 2, 5}: 5 is 1's second thread."""
    _fake_sysfs(tmp_path, monkeypatch, [(0, 4), (1, 5), (2, 6), (3, 7)], allowed={1, 2, 5})
    assert pinning.cores() == [1, 2, 5]
    assert pinning.physical_cores() == [1, 2] and pinning.physical_core_count() == 2
    assert pinning.sharing_a_core(3) == [(0, 2)]


def test_without_a_topology_every_cpu_is_taken_for_a_core_and_the_note_says_so(
        tmp_path, monkeypatch):
    _fake_sysfs(tmp_path, monkeypatch, [])  # an empty /sys: a container that hides it
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert not pinning.smt_known() and pinning.core_of() is None
    assert pinning.cores() == pinning.physical_cores() == [0, 1, 2, 3]
    assert pinning.sharing_a_core(3) is None  # cannot be told
    assert pinning.physical_core_count() == psutil.cpu_count(logical=False)
    assert "does not say which CPUs are threads of one core" in pinning.topology_note(3)


def test_unpinned_the_pool_order_is_plain_and_sharing_cannot_be_told(no_pinning, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(pinning, "SYS_CPU", str(tmp_path / "missing"))  # macOS: no /sys
    assert pinning.cores() == list(range(os.cpu_count()))
    assert pinning.sharing_a_core(2) is None
    assert "does not say which CPUs are threads of one core" in pinning.topology_note()


def test_one_thread_per_core_more_devices_than_cpus_take_turns(tmp_path, monkeypatch):
    _fake_sysfs(tmp_path, monkeypatch, [(0,), (1,)])  # this VM's shape: 2 cores, 1 thread each
    assert pinning.cores() == pinning.physical_cores() == [0, 1]
    assert pinning.sharing_a_core(3) == [(0, 2)]
    assert pinning.topology_note(3).splitlines()[1:] == [
        "3 devices; these share a core (shared, not independent):",
        "  devices 0 and 2: take turns on CPU 0"]
