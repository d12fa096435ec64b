"""What makes a process a "device": one CPU core, one BLAS thread.

Pinning needs ``os.sched_setaffinity`` (Linux). Where it is missing (macOS, Windows)
devices run unpinned: the results are the same, the timings noisier. :func:`pinning`
says which it is, so a page can tell its reader. ``MGPU_NO_PINNING=1`` in the environment
makes a Linux machine behave as one without pinning (worker processes inherit it), which
is how the tests check that path.
"""
import os

__all__ = ["PIN_ENV", "cores", "can_pin", "pin", "pinning", "affinity", "cores_shared"]

# One BLAS thread per device, or N devices on N cores fight over 2N threads. The MALLOC_
# pair keeps freed memory inside the process: by default glibc gives each step's large
# activation buffers back to the OS and page-faults them in again at the next step, which
# cost the benchmark CNN 10-15 % of its step time (mgpu_lab.measure.bench measured it).
PIN_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20), "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}


def can_pin():
    """True where a process can be bound to one core (``os.sched_setaffinity`` exists)."""
    if os.environ.get("MGPU_NO_PINNING"):
        return False
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def cores():
    """The CPU cores this process may run on (all of them where affinity is unknown)."""
    return sorted(os.sched_getaffinity(0)) if can_pin() else list(range(os.cpu_count() or 1))


def pin(core):
    """Bind this process to ``core``; False (and nothing done) where pinning is missing."""
    if core is None or not can_pin():
        return False
    os.sched_setaffinity(0, {core})
    return True


def pinning():
    """One line for a reader: are devices pinned to cores on this machine?"""
    if can_pin():
        return f"devices are pinned, one per core ({len(cores())} cores available)"
    return ("this system cannot pin a process to a core (no sched_setaffinity): devices run "
            "unpinned, so results are the same but timings are noisier")


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
