"""The benchmark's baseline: the compiled gradient function called bare, with no pool
around it, in a fresh process pinned to one core with one BLAS thread (as every device is).

The same process measures the machine constants the cost model needs for this machine:
the copy bandwidth into shared memory and a message round trip. It talks over its
stdin/stdout, one JSON line per command.
"""
import base64
import json
import os
import pickle
import subprocess
import sys
import time
from multiprocessing import shared_memory

import numpy as np

from .._theano import floatX
from ..data import random_batch
from ..engines.pinning import PIN_ENV, cores, pin
from ..models import build

__all__ = ["BareCall"]

_MARK = "@bench "  # prefix of the baseline subprocess's result lines on stdout


def _emit(obj):
    print(_MARK + json.dumps(obj), flush=True)


def _copy_bandwidth(n_bytes, repeats=50):
    """Bytes/s of copying ``n_bytes`` of float32 into a shared-memory block."""
    n = max(1, n_bytes // 4)
    shm = shared_memory.SharedMemory(create=True, size=4 * n)
    try:
        dst, src = np.ndarray((n,), floatX, buffer=shm.buf), np.ones(n, floatX)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            times.append(time.perf_counter() - t0)
        del dst
    finally:
        shm.close()
        shm.unlink()
    return 4 * n / float(np.median(times))


def _baseline_child():
    """The bare-call process: pins itself, compiles, then answers one command per line."""
    job = pickle.loads(base64.b64decode(sys.stdin.readline()))
    pin(job["core"])
    model = build(job["spec"])
    fn = model.loss_and_gradients_function()
    x, y = random_batch(model, job["max_batch"])
    _emit({"ready": True})
    for line in sys.stdin:  # until the parent closes our stdin
        cmd = json.loads(line)
        if cmd["cmd"] == "bare":
            xb, yb = x[:cmd["batch_size"]], y[:cmd["batch_size"]]
            times = []
            for _ in range(cmd["steps"]):
                t0 = time.perf_counter()
                fn(xb, yb)  # the result is dropped here, inside the timing, as a device does
                times.append(time.perf_counter() - t0)
            _emit({"seconds": times})
        elif cmd["cmd"] == "copy":
            _emit({"copy_bw": _copy_bandwidth(cmd["bytes"])})
        else:
            _emit({})  # ping


class BareCall:
    """A fresh process pinned to one core with one BLAS thread (as every device is) that
    runs the compiled gradient function bare, with no pool around it, on request.

    It lives through the whole benchmark, so bare calls and pool steps alternate: a change
    of load on the machine affects both sides of the N=1 overhead alike.
    """

    def __init__(self, spec, max_batch, core=None):
        env = {**os.environ, **PIN_ENV}  # before the child's numpy loads: 1 BLAS thread
        code = "from mgpu_lab.measure.baseline import _baseline_child; _baseline_child()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, bufsize=1)
        job = {"spec": spec, "core": cores()[0] if core is None else core, "max_batch": max_batch}
        self._send(base64.b64encode(pickle.dumps(job)).decode())
        self._reply()  # ready: compiled

    def _send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _reply(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the bare-call process exited (code {self.proc.wait()}); "
                                   f"its error is printed above")
            if line.startswith(_MARK):  # anything else is Theano talking
                return json.loads(line[len(_MARK):])

    def seconds(self, batch_size, steps):
        """Seconds of each of ``steps`` bare calls on ``batch_size`` samples, in a row."""
        self._send(json.dumps({"cmd": "bare", "batch_size": int(batch_size), "steps": int(steps)}))
        return self._reply()["seconds"]

    def copy_bandwidth(self, n_bytes):
        self._send(json.dumps({"cmd": "copy", "bytes": int(n_bytes)}))
        return self._reply()["copy_bw"]

    def round_trip(self, n=200):
        """Median seconds of one message to this process and its answer back."""
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self._send('{"cmd": "ping"}')
            self._reply()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
