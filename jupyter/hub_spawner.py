"""The class server's spawner: each student's server on its own cores, under a memory limit.

JupyterHub's LocalProcessSpawner starts a student's server as that student (setuid). This
one adds, in the child process before it becomes the student:

- **cores** (CPU affinity): the hub's cores are cut into sets of ``cores_per_student``;
  the k-th student of the class group (students sorted by uid, i.e. in the order
  ``hub_students.py add`` created them) gets set k mod (number of sets). The server,
  its kernels and their device processes inherit the set, so
  ``mgpu_lab.engines.pinning.cores()`` hands each student's devices different cores.
  With more students than sets, sets are shared round-robin and the server's
  environment says so: ``MGPU_CORES_SHARED=1`` (``MGPU_CORES`` lists the set).
- **memory**: ``Spawner.mem_limit`` for all of a student's processes together, through
  a memory cgroup (v2 ``memory.max``, or v1 ``memory.limit_in_bytes`` under the hub's
  own cgroup) when the hub can create one; else ``RLIMIT_AS`` per process (a cap on each
  process's address space, not on their sum). ``MGPU_MEMORY_LIMIT`` says which.

Stopping a server also kills what it left behind (the processes in the student's
cgroup, or else every process of the student's uid). Affinity places a server; it is not
a fence (a process may widen its own affinity).
"""
import asyncio
import grp
import os
import pwd
import resource
import signal

import psutil

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Int, Unicode

__all__ = ["core_sets", "class_members", "assign_cores", "blocked_folders", "unreachable",
           "memory_cgroup", "ClassSpawner"]

CGROUP = "/sys/fs/cgroup"


def core_sets(cores, per_student):
    """Disjoint sets of ``per_student`` consecutive cores (at least one set, the last
    sets never short: spare cores stay unused)."""
    cores = sorted(cores)
    if per_student < 1:
        raise ValueError(f"cores per student must be at least 1, got {per_student}")
    if per_student > len(cores):
        raise ValueError(f"{per_student} cores per student, but the hub has only "
                         f"{len(cores)} cores ({cores}): ask for at most {len(cores)}")
    return [cores[i:i + per_student] for i in range(0, len(cores) - per_student + 1,
                                                    per_student)]


def class_members(group):
    """The class group's members, sorted by uid (the order they were created in)."""
    try:
        names = grp.getgrnam(group).gr_mem
    except KeyError:
        raise ValueError(f"no group {group!r}: create the class with "
                         f"jupyter/hub_students.py add CLASS_LIST") from None
    return sorted(names, key=lambda n: pwd.getpwnam(n).pw_uid)


def assign_cores(user, members, cores, per_student):
    """(cores of ``user``, shared?): round-robin over :func:`core_sets` in class order."""
    if user not in members:
        raise ValueError(f"{user!r} is not in the class ({len(members)} students)")
    sets = core_sets(cores, per_student)
    k = members.index(user)
    sharing = [m for i, m in enumerate(members) if i % len(sets) == k % len(sets)]
    return sets[k % len(sets)], len(sharing) > 1


def blocked_folders(paths):
    """Folders on the way to ``paths`` (symlinks followed) that other users cannot enter:
    a student's server could not run the project's Python or import its library."""
    blocked = []
    for path in paths:
        real = os.path.realpath(path)
        parts = real.split(os.sep)
        for i in range(2, len(parts)):
            folder = os.sep.join(parts[:i]) or os.sep
            if not os.stat(folder).st_mode & 0o001 and folder not in blocked:
                blocked.append(folder)
    return blocked


def unreachable(python):
    """Why students could not run ``python`` (the project's .venv) and import the library,
    with the fix; None when they can."""
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mgpu_lab")
    blocked = blocked_folders([python, lib])
    if not blocked:
        return None
    return (f"students cannot reach the project's Python ({os.path.realpath(python)}) or "
            f"library: other users may not enter {', '.join(blocked)}. Either let them pass "
            f"through (chmod o+x {' '.join(blocked)}: enter, not list) or rebuild .venv from "
            f"a system Python (rm -rf .venv; make setup PYTHON=/usr/bin/python3)")


def _own_cgroup_v1():
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.rstrip("\n").split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return None


def memory_cgroup(user, limit):
    """Create ``user``'s memory cgroup with ``limit`` bytes; its ``cgroup.procs`` path,
    or None where this system does not let the hub make one (no root, no controller)."""
    try:
        if os.path.exists(f"{CGROUP}/cgroup.controllers"):  # v2: one tree
            base = f"{CGROUP}/mgpu-hub"
            os.makedirs(base, exist_ok=True)
            with open(f"{base}/cgroup.subtree_control", "w") as f:
                f.write("+memory")
            limit_file = "memory.max"
        elif os.path.isdir(f"{CGROUP}/memory"):  # v1: below the hub's own memory cgroup
            base = f"{CGROUP}/memory{_own_cgroup_v1() or ''}".rstrip("/") + "/mgpu-hub"
            limit_file = "memory.limit_in_bytes"
        else:
            return None
        path = f"{base}/{user}"
        os.makedirs(path, exist_ok=True)
        with open(f"{path}/{limit_file}", "w") as f:
            f.write(str(int(limit)))
        return f"{path}/cgroup.procs"
    except OSError:
        return None


class ClassSpawner(LocalProcessSpawner):
    """LocalProcessSpawner + a core set and a memory limit per student (module doc)."""

    cores_per_student = Int(2, config=True, help="cores in each student's set")
    class_group = Unicode("mgpu-students", config=True,
                          help="the system group whose members are the class")

    async def start(self):
        problem = unreachable(self.cmd[0])
        if problem:
            raise RuntimeError(problem)
        members = class_members(self.class_group)
        hub_cores = sorted(os.sched_getaffinity(0))
        self.cores, self.shared = assign_cores(self.user.name, members, hub_cores,
                                               self.cores_per_student)
        self.cgroup_procs = memory_cgroup(self.user.name, self.mem_limit) \
            if self.mem_limit else None
        self.log.info("%s: cores %s%s, memory %s", self.user.name, self.cores,
                      " (shared)" if self.shared else "", self._memory_note())
        return await super().start()

    def _memory_note(self):
        if not self.mem_limit:
            return "unlimited"
        how = "cgroup" if self.cgroup_procs else "rlimit-as-per-process"
        return f"{how}:{int(self.mem_limit)}"

    def get_env(self):
        env = super().get_env()
        env["MGPU_CORES"] = ",".join(map(str, self.cores))
        env["MGPU_CORES_SHARED"] = "1" if self.shared else "0"
        env["MGPU_MEMORY_LIMIT"] = self._memory_note()
        return env

    def make_preexec_fn(self, name):
        become_user = super().make_preexec_fn(name)
        cores, procs, limit = set(self.cores), self.cgroup_procs, self.mem_limit

        def preexec():  # in the child, still root: place it, then become the student
            os.sched_setaffinity(0, cores)
            if procs:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))
            elif limit:
                resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
            become_user()

        return preexec

    async def stop(self, now=False):
        """Stop the server, then whatever it left running: a kernel's device processes,
        or a compiler Theano started, outlive a killed kernel otherwise."""
        await super().stop(now=now)
        procs = getattr(self, "cgroup_procs", None)
        for _ in range(50):
            left = _leftovers(procs, self.user.name)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            await asyncio.sleep(0.1)
        if procs:
            try:
                os.rmdir(os.path.dirname(procs))
            except OSError:
                pass  # a process is still leaving; the next start reuses the folder


def _leftovers(procs, user):
    """Pids still in the student's cgroup; without one, every process of the student's
    uid (a student's account is used only through the hub)."""
    if procs:
        try:
            return [int(p) for p in open(procs).read().split()]
        except OSError:
            return []
    uid = pwd.getpwnam(user).pw_uid
    return [p.pid for p in psutil.process_iter(["uids"])
            if p.info["uids"] and p.info["uids"].real == uid]
