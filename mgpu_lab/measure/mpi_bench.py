"""Measured MPI communication: the strategies' exchanges on 2..N ranks, in real steps.

    bench_engine  MPIEngine steps (what the trainer calls) of an MLP sized to each gradient
                  size: the whole step and its communication phases   (under mpiexec)
    ping_pong     one link's latency and bandwidth, the cost model's inputs
    run           launches ``mpiexec -n N`` for each N and adds the cost model's prediction
    save, format_table   the result as JSON + CSV, and as a table (figures.plots draws it)

``python -m mgpu_lab.measure.mpi_bench bench ...`` is the rank side that ``run`` launches.
"""
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from .._theano import floatX
from ..data import random_batch
from ..engines.mpi import ROOT, MPIEngine, install_abort_hook, mpi, mpiexec_command, world
from ..engines.update import Update
from ..optim import SGD
from ..predict.algorithms import ALGORITHMS, comm_seconds, mpi_host_seconds
from ..presets import sized_mlp
from .machine import machine_info, save_result

__all__ = ["bench_engine", "ping_pong", "run", "save", "format_table", "STRATEGIES"]

STRATEGIES = ("host", "ring", "sharded")  # what mpi-bench compares by default


def _max_over_ranks(comm, seconds):
    """A step is done when its slowest rank is: the max of every rank's times."""
    mine = np.ascontiguousarray(seconds, dtype=np.float64)
    out = np.empty_like(mine)
    comm.Allreduce(mine, out, op=mpi().MAX)
    return out


# phases of Timings that are communication (or the host's work on it), per step: the host
# gather's Gatherv (exchange), stack and Bcast (scatter); the others' exchange
_COMM = ("exchange", "stack", "scatter")


def bench_engine(sizes_bytes=(1e6, 1e7, 1e8), strategies=STRATEGIES, repeats=5, warmup=2,
                 batch_size=64, lr=1e-3, comm=None):
    """Time :meth:`MPIEngine.step` (SGD) on an MLP whose gradient has each of ``sizes_bytes``.

    Every step starts after a barrier; per step the slowest rank's times count. One row
    per size and strategy: n_ranks, strategy, bytes, comm_s (median; min, max) = gather +
    stack + broadcast (host) or the devices' exchange (the others), the host's phases
    (gather_s, stack_s, broadcast_s), step_s, compute_s, update_s, repeats.
    """
    comm = comm or world()
    rows = []
    for nbytes in sizes_bytes:
        model = sized_mlp(nbytes)  # one graph for every size: compiled once, then cached
        x, y = random_batch(model, batch_size, seed=0)
        for strategy in strategies:
            opt, times = SGD(lr), []
            with MPIEngine(model, comm.size, strategy=strategy, comm=comm) as engine:
                values = model.get_values()
                on_host = engine.strategy.updates_on_host
                if not on_host:  # the devices own their parameters from here on
                    engine.load_state_dict({"values": values})
                for i in range(warmup + repeats):
                    comm.Barrier()
                    t0 = time.perf_counter()
                    result = engine.step(values if on_host else None, x, y,
                                         Update(opt, [] if on_host else None, i))
                    if on_host:
                        values = result.new_values  # the host's parameters, as a trainer keeps them
                    tm = result.timings
                    times.append([time.perf_counter() - t0, tm.compute, tm.update]
                                 + [getattr(tm, k) for k in _COMM])
            t = _max_over_ranks(comm, times)[warmup:]
            comm_t = t[:, 3:].sum(axis=1)
            rows.append({"n_ranks": comm.size, "strategy": strategy, "bytes": 4 * model.n_params,
                         "batch_size": batch_size, "repeats": repeats,
                         "comm_s": float(np.median(comm_t)), "comm_min_s": float(np.min(comm_t)),
                         "comm_max_s": float(np.max(comm_t)),
                         "step_s": float(np.median(t[:, 0])), "compute_s": float(np.median(t[:, 1])),
                         "update_s": float(np.median(t[:, 2])),
                         **({"gather_s": float(np.median(t[:, 3])), "stack_s": float(np.median(t[:, 4])),
                             "broadcast_s": float(np.median(t[:, 5]))} if engine.strategy.updates_on_host
                            else {})})
    return rows


def ping_pong(comm=None, small=8, large=1 << 24, repeats=20):
    """Latency and bandwidth of one link (rank 0 <-> rank 1), the cost model's inputs.

    latency = half the median round trip of ``small`` bytes; bandwidth = ``large`` bytes
    over (half the median round trip of ``large`` bytes - latency). Needs >= 2 ranks;
    the others sleep meanwhile. Returns the same dict on every rank.
    """
    comm = comm or world()
    if comm.size < 2:
        raise ValueError("ping_pong needs at least 2 ranks (mpiexec -n 2 or more)")
    result, idle = np.zeros(2), comm.Ibarrier() if comm.rank >= 2 else None
    while idle is not None and not idle.Test():
        time.sleep(1e-3)  # ranks 2.. stay off the cores (a spinning wait would steal them)
    if comm.rank < 2:
        other = 1 - comm.rank
        for i, nbytes in enumerate((small, large)):
            buf = np.zeros(max(1, nbytes // 4), floatX)
            rtts = []
            for _ in range(repeats + 2):
                t = time.perf_counter()
                if comm.rank == 0:
                    comm.Send(buf, dest=other)
                    comm.Recv(buf, source=other)
                else:
                    comm.Recv(buf, source=other)
                    comm.Send(buf, dest=other)
                rtts.append(time.perf_counter() - t)
            result[i] = np.median(rtts[2:]) / 2
        if comm.size > 2:
            comm.Ibarrier().Wait()  # releases the idle ranks
    comm.Bcast(result, root=0)
    latency = float(result[0])
    return {"latency_s": latency, "bandwidth_Bps": large / max(result[1] - latency, 1e-12),
            "small_bytes": small, "large_bytes": large, "memory_bw_Bps": _memory_bandwidth(comm)}


def _memory_bandwidth(comm, n_bytes=1 << 26, repeats=5):
    """Bytes/s of one large in-memory copy on rank 0 (read + write counted once, as the
    stacking's model counts them), broadcast to every rank."""
    bw = np.zeros(1)
    if comm.rank == 0:
        src, dst, times = np.ones(n_bytes // 4, np.float32), np.empty(n_bytes // 4, np.float32), []
        for _ in range(repeats):
            t = time.perf_counter()
            np.copyto(dst, src)
            times.append(time.perf_counter() - t)
        bw[0] = n_bytes / float(np.median(times))
    comm.Bcast(bw, root=0)
    return float(bw[0])


# -- the benchmark over 2..4 ranks: launch, predict, save ---------------------------------
def _rank_main(argv=None):
    """``mpiexec -n N python -m mgpu_lab.measure.mpi_bench bench ... --out FILE``: one N's
    measurements."""
    import argparse
    import json
    p = argparse.ArgumentParser(prog="python -m mgpu_lab.measure.mpi_bench",
                                description="rank side of the MPI benchmark (see run)")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--sizes", default="1e6,1e7,1e8", help="gradient sizes in bytes")
    b.add_argument("--strategies", default=",".join(STRATEGIES))
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--out", required=True, help="rank 0 writes the JSON here")
    args = p.parse_args(argv)
    comm = world()
    install_abort_hook(comm)
    sizes, strategies = [float(s) for s in args.sizes.split(",")], args.strategies.split(",")
    part = {"n_ranks": comm.size, "link": ping_pong(comm) if comm.size > 1 else None,
            "rows": bench_engine(sizes, strategies, args.repeats, comm=comm)}
    if comm.rank == ROOT:
        Path(args.out).write_text(json.dumps(part))
    return 0


def _predict(row, link):
    """The cost model's communication time for a measured row, from the measured link and
    memory bandwidth: the host gather as MPI runs it (rank 0 is a device: 2(N-1) transfers,
    plus the stacking); the ring and the sharded optimizer (the ring's bytes) by their
    formulas. None where the model has no formula for one machine (hierarchical)."""
    if link is None:
        return None
    bw, latency = link["bandwidth_Bps"], link["latency_s"]
    if row["strategy"] == "host":
        return mpi_host_seconds(row["bytes"], row["n_ranks"], bw, latency,
                                link["memory_bw_Bps"])["total"]
    if row["strategy"] not in ALGORITHMS:
        return None
    return comm_seconds(row["strategy"], row["bytes"], row["n_ranks"], bw, bw, latency)


def run(ranks=(2, 3, 4), sizes_bytes=(1e6, 1e7, 1e8), strategies=STRATEGIES, repeats=5,
        timeout=900, progress=True):
    """Run :func:`bench_engine` under ``mpiexec -n N`` for each N.

    Call it from a normal process (not under mpiexec). Returns a JSON-able dict: the
    machine, each N's measured link (ping-pong), and one row per N x strategy x size with
    the measured communication (``comm_*``), the measured step (``step_*``) and the cost
    model's prediction (``predicted_comm_s``).
    """
    import datetime
    import json
    import subprocess
    import tempfile

    from tqdm.auto import tqdm
    rows, links, load = [], {}, os.getloadavg()  # other work on the machine skews timings
    args = ["--sizes", ",".join(f"{float(s):g}" for s in sizes_bytes),
            "--strategies", ",".join(strategies), "--repeats", str(repeats)]
    for n in tqdm(list(ranks), desc="mpiexec -n N", unit="N", disable=not progress):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.json"
            cmd = mpiexec_command(n, ["-m", "mgpu_lab.measure.mpi_bench", "bench", *args, "--out", out])
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                                   f"{proc.stderr[-4000:]}")
            part = json.loads(out.read_text())
        links[n] = part["link"]
        for r in part["rows"]:
            row = {"n_ranks": n, "strategy": r["strategy"], "bytes": r["bytes"],
                   "comm_s": r["comm_s"], "comm_min_s": r["comm_min_s"],
                   "comm_max_s": r["comm_max_s"], "comm_repeats": r["repeats"],
                   **{f"comm_{k}": r[k] for k in ("gather_s", "stack_s", "broadcast_s") if k in r},
                   "step_s": r["step_s"], "step_compute_s": r["compute_s"],
                   "step_update_s": r["update_s"], "step_batch_size": r["batch_size"]}
            row["predicted_comm_s"] = _predict(row, part["link"])
            rows.append(row)
    return {"created": datetime.datetime.now().isoformat(timespec="seconds"),
            "kind": "measured: MPIEngine steps (predicted_comm_s: predict.algorithms with the "
                    "measured link and memory bandwidth)",
            "machine": machine_info(), "ranks": list(ranks),
            "load_average_1min": {"before": load[0], "after": os.getloadavg()[0]},
            "links": {str(k): v for k, v in links.items()}, "rows": rows}


def save(result, out_dir="results"):
    """Write ``mpi-bench-<timestamp>.json`` and ``.csv`` (one row per N x strategy x size,
    the machine on every row). Returns the paths and the base path (for a figure)."""
    m = result["machine"]
    extra = {"created": result["created"], "cpu": m["cpu"], "machine_cores": m["cores"],
             "python": m["python"], "numpy": m["numpy"], "kind": result["kind"]}
    json_path, csv_path, base = save_result(result, out_dir, "mpi-bench", extra)
    return [json_path, csv_path], base


def format_table(result):
    """The measured table, one line per N, size and strategy, with the prediction (ms)."""
    def ms(r, k, width, digits=2):  # a phase the strategy does not have prints as '-'
        return f"{1e3 * r[k]:{width}.{digits}f}" if r.get(k) is not None else f"{'-':>{width}}"
    # lines within 88 characters, the book's page width (mgpu_lab.figures.tables.WIDTH)
    lines = [f"measured on {result['machine']['cpu']}, {result['machine']['cores']} cores "
             f"(ranks > cores are oversubscribed):",
             "MPIEngine steps, ms, medians; pred = cost model",
             f"{'N':>2} {'MB':>6} {'strategy':>12} | {'comm':>8} {'pred':>7} {'gather':>7} "
             f"{'stack':>7} {'bcast':>7} | {'update':>7} {'step':>8}"]
    for r in result["rows"]:
        lines.append(
            f"{r['n_ranks']:>2} {r['bytes'] / 1e6:6.1f} {r['strategy']:>12} | "
            f"{ms(r, 'comm_s', 8)} {ms(r, 'predicted_comm_s', 7)} "
            f"{ms(r, 'comm_gather_s', 7)} {ms(r, 'comm_stack_s', 7)} "
            f"{ms(r, 'comm_broadcast_s', 7)} | {ms(r, 'step_update_s', 7)} {ms(r, 'step_s', 8, 1)}")
    for n, link in result["links"].items():
        if link:
            lines.append(f"link (ping-pong, N={n}): latency {1e6 * link['latency_s']:.1f} us, "
                         f"bandwidth {link['bandwidth_Bps'] / 1e9:.2f} GB/s")
    return "\n".join(textwrap.fill(line, 88, subsequent_indent="    ", break_long_words=False)
                     if len(line) > 88 else line for line in lines)


if __name__ == "__main__":
    sys.exit(_rank_main())
