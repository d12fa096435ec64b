"""How much one student costs: the start-up time and memory of a student's server running
chapter 3 (run as root; the teacher's guide quotes its output).

    .venv/bin/python jupyter/hub_measure.py [--cores-per-student 1] > hub_measure.json

Creates a throw-away student (its own class group), starts a hub on a free port, logs in,
and measures: seconds from the spawn request to a ready server; seconds for chapter 3's
first two code cells on a fresh account (empty Theano cache: *cold*) and again in a new
kernel (*warm*); the student's memory: the sum over all the student's processes of their
proportional set size (PSS: shared pages divided among the processes sharing them), after
the first cells and at the peak (sampled every 0.2 s) while the whole chapter runs (its
DevicePool adds 3 device processes). Then it stops the hub and removes the student.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import jupytext
import psutil
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import hub_start  # noqa: E402
import hub_students  # noqa: E402
from hub_client import HubStudent  # noqa: E402

PY = os.path.join(ROOT, ".venv", "bin", "python")


def pss(uid):
    """Bytes: the PSS of every process of ``uid``, summed."""
    total = 0
    for p in psutil.process_iter(["uids"]):
        try:
            if p.info["uids"] and p.info["uids"].real == uid:
                total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class Peak(threading.Thread):
    def __init__(self, uid):
        super().__init__(daemon=True)
        self.uid, self.peak, self.done = uid, 0, threading.Event()

    def run(self):
        while not self.done.wait(0.2):
            self.peak = max(self.peak, pss(self.uid))


def chapter3_cells():
    nb = jupytext.read(os.path.join(ROOT, "book", "03_four_steps.md"))
    return [c.source for c in nb.cells if c.cell_type == "code"
            and "solution" not in c.metadata.get("tags", [])]


def measure(url, name, password):
    import pwd
    uid = pwd.getpwnam(name).pw_uid
    s = HubStudent(url, name, password).login()
    out = {"start_s": round(s.start(), 1)}
    cells = chapter3_cells()
    for label in ("cold", "warm"):
        kernel = s.kernel()
        t0 = time.perf_counter()
        for cell in cells[:2]:
            s.run(cell, kernel)
        out[f"first_cells_{label}_s"] = round(time.perf_counter() - t0, 1)
        out[f"pss_after_first_cells_{label}_MiB"] = round(pss(uid) / 2**20)
        if label == "cold":
            peak = Peak(uid)
            peak.start()
            t0 = time.perf_counter()
            for cell in cells[2:]:
                s.run(cell, kernel)
            out["rest_of_chapter_s"] = round(time.perf_counter() - t0, 1)
            peak.done.set()
            peak.join()
            out["pss_peak_whole_chapter_MiB"] = round(peak.peak / 2**20)
        s.api("DELETE", f"/user/{name}/api/kernels/{kernel}")
    s.stop()
    time.sleep(3)
    out["restart_s"] = round(s.start(), 1)
    out["pss_idle_server_MiB"] = round(pss(uid) / 2**20)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cores-per-student", type=int, default=2)
    args = p.parse_args()
    tag = uuid.uuid4().hex[:6]
    name, group = f"mgpu-m{tag}", f"mgpu-mc{tag}"
    class_list = f"/tmp/{group}.txt"
    with open(class_list, "w") as f:
        f.write(name + "\n")
    blocked = hub_start.blocked_folders([PY])
    modes = {b: os.stat(b).st_mode & 0o7777 for b in blocked}
    hub = None
    try:
        for b in blocked:
            os.chmod(b, modes[b] | 0o001)
        password = hub_students.add(class_list, group, class_list + ".pw")[name]
        port = hub_start._free_port()
        hub = subprocess.Popen([PY, os.path.join(HERE, "hub_start.py"), "--port", str(port),
                                "--group", group, "--state", f"/tmp/{group}-state",
                                "--cores-per-student", str(args.cores_per_student)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if requests.get(f"{url}/hub/login", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        result = measure(url, name, password)
        result["machine"] = f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
        print(json.dumps(result, indent=1))
    finally:
        if hub and hub.poll() is None:
            hub.terminate()
            hub.wait(60)
        subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)
        for f in (class_list, class_list + ".pw"):
            if os.path.exists(f):
                os.unlink(f)
        for b, mode in modes.items():
            os.chmod(b, mode)


if __name__ == "__main__":
    main()
