"""Measured MPI communication: host gather against all-reduce on 2..N ranks.

    bench_comm   the exchange alone, for gradients of 1 MB .. 100 MB   (under mpiexec)
    bench_steps  whole training steps of MPIEngine                     (under mpiexec)
    ping_pong    one link's latency and bandwidth, the cost model's inputs
    run          launches ``mpiexec -n N`` for each N and adds the cost model's prediction
    save, format_table   the result as JSON + CSV (+ PNG), and as a table

``python -m mgpu_lab.measure.mpi_bench bench ...`` is the rank side that ``run`` launches.
"""
import os
import sys
import time
from pathlib import Path

import numpy as np

from .._theano import floatX
from ..data import random_batch
from ..engines.mpi import (ROOT, MPIEngine, allreduce_weighted, host_exchange, install_abort_hook,
                           mpi, mpiexec_command, world)
from ..gradients import STRATEGIES
from ..optim import SGD
from ..predict.costmodel import comm_seconds
from ..presets import sized_mlp
from ..split import split_sizes
from .machine import machine_info, save_result

__all__ = ["bench_comm", "ping_pong", "bench_steps", "run", "save", "format_table"]


def _max_over_ranks(comm, seconds):
    """A collective is done when its slowest rank is: the max of every rank's times."""
    mine = np.ascontiguousarray(seconds, dtype=np.float64)
    out = np.empty_like(mine)
    comm.Allreduce(mine, out, op=mpi().MAX)
    return out


def _summary(times):
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times)),
            "max_s": float(np.max(times)), "repeats": len(times)}


def bench_comm(sizes_bytes=(1e6, 1e7, 1e8), strategies=STRATEGIES, repeats=7, warmup=2,
               comm=None):
    """Time the communication part of a step alone, for gradients of ``sizes_bytes``.

    host: Gatherv to rank 0 + weighted stack there + Bcast of P bytes back;
    ring: scale by n_i / B, then the ring all-reduce (reduce-scatter + all-gather, one
    Sendrecv per step). Every repeat starts after a barrier; its time is the slowest rank's. Run on every rank (``mpiexec -n N``); returns the same list of
    rows on every rank: n_ranks, strategy, bytes, median_s, min_s, max_s, repeats, and
    for host the median of each phase on rank 0 (gather_s, stack_s, broadcast_s).
    """
    comm = comm or world()
    n, rows = comm.size, []
    sizes = split_sizes(64 * n - 1, n)  # uneven on purpose: the weights are not all equal
    for nbytes in sizes_bytes:
        P = max(1, int(nbytes) // 4)
        grad = np.random.RandomState(comm.rank).standard_normal(P).astype(floatX)
        flat, out = np.empty_like(grad), np.empty_like(grad)
        gathered = np.empty((n, P), floatX) if comm.rank == ROOT else None
        for strategy in strategies:
            times = []  # per repeat: total, then the host's phases (gather, stack, broadcast)
            for _ in range(warmup + repeats):
                flat[:] = grad  # the ring scales in place: start each repeat afresh
                comm.Barrier()
                t = time.perf_counter()
                if strategy == "host":
                    phases = host_exchange(comm, flat, gathered, sizes, out)
                else:
                    allreduce_weighted(comm, flat, sizes[comm.rank] / sum(sizes), out)
                    phases = (np.nan,) * 3
                times.append((time.perf_counter() - t, *phases))
            times = np.array(times)[warmup:]
            row = {"n_ranks": n, "strategy": strategy, "bytes": 4 * P,
                   **_summary(_max_over_ranks(comm, times[:, 0]))}
            if strategy == "host":  # the phases as the host (rank 0) saw them
                phases = np.ascontiguousarray(times[:, 1:])
                comm.Bcast(phases, root=ROOT)
                row.update({f"{k}_s": float(np.median(phases[:, i]))
                            for i, k in enumerate(("gather", "stack", "broadcast"))})
            rows.append(row)
        del grad, flat, out, gathered
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
            "small_bytes": small, "large_bytes": large}


def bench_steps(sizes_bytes=(1e6, 1e7, 1e8), strategies=STRATEGIES, steps=5, warmup=2,
                batch_size=64, lr=1e-3, comm=None):
    """Time whole training steps (SGD) of an MLP sized to each gradient size.

    Each step is :meth:`MPIEngine.step` (what the trainer calls): split, compute,
    exchange, update. Per step the slowest rank's times count. Rows: n_ranks, strategy,
    bytes, step_s (median), comm_s (median of the exchange phases: host gather + stack +
    broadcast, ring allreduce), compute_s, batch_size.
    """
    comm = comm or world()
    rows = []
    for nbytes in sizes_bytes:
        model = sized_mlp(nbytes)  # one graph for every size: compiled once, then cached
        x, y = random_batch(model, batch_size, seed=0)
        for strategy in strategies:
            engine, opt = MPIEngine(model, comm.size, strategy=strategy, comm=comm), SGD(lr)
            values, times = model.get_values(), []
            for _ in range(warmup + steps):
                t = time.perf_counter()
                result = engine.step(values, x, y, lambda v, g, loss: opt.update(v, g))
                values, tm = result.new_values, result.timings
                times.append([time.perf_counter() - t, tm.compute, tm.exchange + tm.stack])
            times = _max_over_ranks(comm, times)[warmup:]
            rows.append({"n_ranks": comm.size, "strategy": strategy, "bytes": 4 * model.n_params,
                         "batch_size": batch_size, "step_s": float(np.median(times[:, 0])),
                         "compute_s": float(np.median(times[:, 1])),
                         "comm_s": float(np.median(times[:, 2])), "steps": steps})
            engine.close()
    return rows


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
    b.add_argument("--strategies", default="host,ring")
    b.add_argument("--repeats", type=int, default=7)
    b.add_argument("--steps", type=int, default=5, help="timed training steps (0: none)")
    b.add_argument("--out", required=True, help="rank 0 writes the JSON here")
    args = p.parse_args(argv)
    comm = world()
    install_abort_hook(comm)
    sizes, strategies = [float(s) for s in args.sizes.split(",")], args.strategies.split(",")
    part = {"n_ranks": comm.size, "link": ping_pong(comm) if comm.size > 1 else None,
            "comm": bench_comm(sizes, strategies, args.repeats, comm=comm),
            "steps": bench_steps(sizes, strategies, args.steps, comm=comm) if args.steps else []}
    if comm.rank == ROOT:
        Path(args.out).write_text(json.dumps(part))
    return 0


def _predict(row, link):
    """The cost model's communication time for a measured row, from the measured link."""
    if link is None:
        return None
    bw, latency = link["bandwidth_Bps"], link["latency_s"]
    return comm_seconds(row["strategy"], row["bytes"], row["n_ranks"], bw, bw, latency)


def run(ranks=(2, 3, 4), sizes_bytes=(1e6, 1e7, 1e8), strategies=STRATEGIES,
              repeats=7, steps=5, timeout=900, progress=True):
    """Run :func:`bench_comm` and :func:`bench_steps` under ``mpiexec -n N`` for each N.

    Call it from a normal process (not under mpiexec). Returns a JSON-able dict: the
    machine, each N's measured link (ping-pong), and one row per N x strategy x size with
    the measured communication time (``comm_*``), the measured training step
    (``step_*``) and the cost model's prediction (``predicted_comm_s``).
    """
    import datetime
    import json
    import subprocess
    import tempfile

    from tqdm.auto import tqdm
    rows, links, load = [], {}, os.getloadavg()  # other work on the machine skews timings
    args = ["--sizes", ",".join(f"{float(s):g}" for s in sizes_bytes),
            "--strategies", ",".join(strategies), "--repeats", str(repeats), "--steps", str(steps)]
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
        for i, r in enumerate(part["comm"]):
            s = part["steps"][i] if part["steps"] else {}  # same order: size, then strategy
            row = {"n_ranks": n, "strategy": r["strategy"], "bytes": r["bytes"],
                   "comm_s": r["median_s"], "comm_min_s": r["min_s"], "comm_max_s": r["max_s"],
                   "comm_repeats": r["repeats"],
                   **{f"comm_{k}": r[k] for k in ("gather_s", "stack_s", "broadcast_s") if k in r},
                   **{k if k.startswith("step_") else f"step_{k}": v for k, v in s.items()
                      if k not in ("n_ranks", "strategy")}}
            row["predicted_comm_s"] = _predict(row, part["link"])
            rows.append(row)
    return {"created": datetime.datetime.now().isoformat(timespec="seconds"),
            "kind": "measured (predicted_comm_s: costmodel.comm_seconds with the measured link)",
            "machine": machine_info(), "ranks": list(ranks),
            "load_average_1min": {"before": load[0], "after": os.getloadavg()[0]},
            "links": {str(k): v for k, v in links.items()}, "rows": rows}


def save(result, out_dir="results", figure=True):
    """Write ``mpi-bench-<timestamp>.json``, ``.csv`` (one row per N x strategy x size, the
    machine on every row) and, with ``figure``, the ``.png`` of :func:`plots.mpi_comm`."""
    m = result["machine"]
    extra = {"created": result["created"], "cpu": m["cpu"], "machine_cores": m["cores"],
             "python": m["python"], "numpy": m["numpy"], "kind": result["kind"]}
    json_path, csv_path, base = save_result(result, out_dir, "mpi-bench", extra)
    paths = [json_path, csv_path]
    if figure:
        from ..figures.plots import mpi_comm  # figures sit above measure: only when asked
        fig = mpi_comm(result)
        paths.append(base.with_suffix(".png"))
        fig.savefig(paths[2], dpi=120, bbox_inches="tight")
    return paths


def format_table(result):
    """The measured table, host beside ring, with the prediction (milliseconds)."""
    ms = lambda r, k: 1e3 * r[k] if r.get(k) is not None else np.nan  # noqa: E731
    lines = [f"measured on {result['machine']['cpu']}, {result['machine']['cores']} cores "
             f"(ranks > cores are oversubscribed); ms, medians; pred = cost model",
             f"{'N':>2} {'MB':>6} | {'host':>8} {'pred':>7} {'gather':>7} {'stack':>7} "
             f"{'bcast':>7} | {'ring':>8} {'pred':>7} | {'step host':>9} {'step ring':>9}"]
    by = {(r["n_ranks"], r["bytes"], r["strategy"]): r for r in result["rows"]}
    for n, nbytes in dict.fromkeys((r["n_ranks"], r["bytes"]) for r in result["rows"]):
        h, g = by.get((n, nbytes, "host"), {}), by.get((n, nbytes, "ring"), {})
        lines.append(
            f"{n:>2} {nbytes / 1e6:6.1f} | {ms(h, 'comm_s'):8.2f} {ms(h, 'predicted_comm_s'):7.2f} "
            f"{ms(h, 'comm_gather_s'):7.2f} {ms(h, 'comm_stack_s'):7.2f} "
            f"{ms(h, 'comm_broadcast_s'):7.2f} | {ms(g, 'comm_s'):8.2f} "
            f"{ms(g, 'predicted_comm_s'):7.2f} | {ms(h, 'step_s'):9.1f} {ms(g, 'step_s'):9.1f}")
    for n, link in result["links"].items():
        if link:
            lines.append(f"link (ping-pong, N={n}): latency {1e6 * link['latency_s']:.1f} us, "
                         f"bandwidth {link['bandwidth_Bps'] / 1e9:.2f} GB/s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_rank_main())
