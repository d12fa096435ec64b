"""What makes a process a "device": one CPU core, one BLAS thread.

Pinning needs ``os.sched_setaffinity`` (Linux). Where it is missing (macOS, Windows)
devices run unpinned: the results are the same, the timings noisier. :func:`pinning`
says which it is, so a page can tell its reader. ``MGPU_NO_PINNING=1`` in the environment
makes a Linux machine behave as one without pinning (worker processes inherit it), which
is how the tests check that path.

Logical CPUs are not cores. With simultaneous multithreading (SMT, Intel's Hyper-Threading)
one physical core runs two (or more) hardware threads, and the operating system lists each
as a CPU; most laptops have two per core. Two devices on the two threads of one core share
its execution units and caches: they compete almost as two devices on one CPU do.
:func:`cores` therefore lists one logical CPU of every physical core first (the pool pins
device d to ``cores()[d % len(cores())]``), and :func:`sharing_a_core` says which devices
end up on the same core. Linux says which CPUs are threads of one core in
``/sys/devices/system/cpu/cpu*/topology/core_cpus_list`` (``thread_siblings_list`` before
kernel 5.7); where that is missing (macOS, Windows, some containers) every logical CPU is
taken for a core, and :func:`topology_note` says the count is unchecked.
"""
import os
from pathlib import Path

__all__ = ["PIN_ENV", "SYS_CPU", "cores", "physical_cores", "core_of", "smt_known",
           "physical_core_count", "sharing_a_core", "topology_note", "can_pin", "pin",
           "pinning", "affinity", "cores_shared"]

# One BLAS thread per device, or N devices on N cores fight over 2N threads. The MALLOC_
# pair keeps freed memory inside the process: by default glibc gives each step's large
# activation buffers back to the OS and page-faults them in again at the next step, which
# cost the benchmark CNN 10-15 % of its step time (mgpu_lab.measure.bench measured it).
PIN_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20), "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}

# Where Linux describes the CPUs (the tests point it at a fake tree)
SYS_CPU = "/sys/devices/system/cpu"
_SIBLING_FILES = ("core_cpus_list", "thread_siblings_list")  # new name first (Linux 5.7)


def can_pin():
    """True where a process can be bound to one core (``os.sched_setaffinity`` exists)."""
    if os.environ.get("MGPU_NO_PINNING"):
        return False
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def _logical_cpus():
    """The logical CPUs this process may run on, ascending (all where affinity is unknown)."""
    return sorted(os.sched_getaffinity(0)) if can_pin() else list(range(os.cpu_count() or 1))


def _parse_cpu_list(text):
    """Linux's CPU list format: ``"0-3,8,10-11"`` -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def _siblings(cpu):
    """The logical CPUs of ``cpu``'s physical core (itself included), or None if unknown."""
    for name in _SIBLING_FILES:
        try:
            return frozenset(_parse_cpu_list(Path(SYS_CPU, f"cpu{cpu}", "topology",
                                                  name).read_text()))
        except (OSError, ValueError):
            continue
    return None


def core_of(cpus=None):
    """``{cpu: its physical core}`` (a core named by its lowest logical CPU) for ``cpus``
    (default: those this process may use), or None where the system does not say."""
    cpus = _logical_cpus() if cpus is None else list(cpus)
    out = {}
    for cpu in cpus:
        sib = _siblings(cpu)
        if not sib or cpu not in sib:
            return None
        out[cpu] = min(sib)
    return out


def smt_known():
    """True where this machine says which logical CPUs share a physical core (Linux's
    /sys topology); False where every logical CPU is taken for a core unchecked."""
    return core_of() is not None


def cores():
    """The logical CPUs this process may run on (hardware threads, not physical cores:
    ``len(cores())`` counts threads), ordered as the pool uses them: one CPU of every
    physical core first, then the cores' second threads, and so on. Device d is pinned to
    ``cores()[d % len(cores())]``, so up to :func:`physical_core_count` devices get a core
    each. Ascending where the topology is unknown or the process cannot be pinned."""
    cpus = _logical_cpus()
    core = core_of(cpus) if can_pin() else None
    if core is None:
        return cpus
    rank = {}  # a CPU's place among its core's usable threads: 0 for the first
    for cpu in cpus:
        rank[cpu] = sum(1 for c in cpus if core[c] == core[cpu] and c < cpu)
    return sorted(cpus, key=lambda c: (rank[c], c))


def physical_cores():
    """One logical CPU (the lowest usable one) of every physical core this process may use:
    the CPUs on which devices do not share a core. Every logical CPU where the topology is
    unknown (see :func:`smt_known`)."""
    cpus = _logical_cpus()  # ascending: a core's first CPU seen is its lowest
    core = core_of(cpus)
    if core is None:
        return cpus
    first = {}
    for cpu in cpus:
        first.setdefault(core[cpu], cpu)
    return sorted(first.values())


def physical_core_count():
    """How many physical cores this process may use; where /sys does not say, psutil's count
    of the machine's physical cores (macOS, Windows), or None if that is unknown too."""
    if core_of() is not None:
        return len(physical_cores())
    try:
        import psutil
        return psutil.cpu_count(logical=False)
    except Exception:  # psutil missing, or a platform it cannot read
        return None


def sharing_a_core(n_devices):
    """The devices that share a physical core when a pool of ``n_devices`` is pinned as
    :class:`~mgpu_lab.engines.local.DevicePool` pins them (device d on
    ``cores()[d % len(cores())]``): a list of tuples of device indexes, one per shared core
    (two hardware threads of one core, or one CPU taken in turns); [] where every device has
    a core to itself. None where that cannot be told (no topology, or no pinning)."""
    cpus = cores()
    core = core_of(cpus) if can_pin() else None
    if core is None:
        return None
    groups = {}
    for d in range(int(n_devices)):
        groups.setdefault(core[cpus[d % len(cpus)]], []).append(d)
    return [tuple(g) for g in sorted(groups.values()) if len(g) > 1]


def topology_note(n_devices=None):
    """Short lines for a reader (joined by newlines, each under 90 characters): logical
    CPUs against physical cores and, for ``n_devices``, which devices share a core
    (hardware threads of one core compete almost as devices taking turns on one CPU do,
    though the pool's ``oversubscribed`` counts only logical CPUs)."""
    n_cpus, n_cores = len(cores()), physical_core_count()
    if core_of() is None:
        where = "psutil's count for the whole machine" if n_cores else "unknown"
        return (f"{n_cpus} logical CPUs; physical cores: {n_cores or '?'} ({where});\n"
                "this system does not say which CPUs are threads of one core,\n"
                "so devices may share a core without a warning")
    line = f"{n_cpus} logical CPUs on {n_cores} physical cores"
    line += (" (one hardware thread per core)" if n_cpus == n_cores
             else f" (the other {n_cpus - n_cores} are further threads of those cores)")
    if n_devices is None:
        return line
    shared = sharing_a_core(n_devices)
    if not shared:
        return f"{line}\n{n_devices} device(s): each on a core of its own"
    cpus, said = cores(), []
    for g in shared:
        who = " and ".join(str(d) for d in g)
        on = sorted({cpus[d % len(cpus)] for d in g})
        said.append(f"  devices {who}: take turns on CPU {on[0]}" if len(on) == 1 else
                    f"  devices {who}: one core's hardware threads "
                    f"(CPUs {', '.join(map(str, on))})")
    return "\n".join([line, f"{n_devices} devices; these share a core (shared, not "
                             f"independent):", *said])


def pin(core):
    """Bind this process to ``core``; False (and nothing done) where pinning is missing."""
    if core is None or not can_pin():
        return False
    os.sched_setaffinity(0, {core})
    return True


def pinning():
    """One line for a reader: are devices pinned to cores on this machine?"""
    if can_pin():
        return "devices are pinned: one per logical CPU, a core of their own while cores last"
    return ("this system cannot pin a process to a core (no sched_setaffinity):\n"
            "devices run unpinned, so results are the same but timings are noisier")


def affinity(pid=None):
    """The cores process ``pid`` (default: this one) may run on, or None where the system
    cannot tell (no ``sched_getaffinity``: macOS, Windows)."""
    if not can_pin():
        return None
    return sorted(os.sched_getaffinity(pid or 0))


def cores_shared():
    """True when the class server (jupyter/hub_spawner.py) gave this student's server a
    core set other students share too: timings measured here are then *shared*."""
    return os.environ.get("MGPU_CORES_SHARED") == "1"
