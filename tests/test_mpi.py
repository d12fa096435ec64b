"""The MPI engine: real ``mpiexec -n 2`` and ``-n 3`` jobs end where the serial engine
ends; a rank that raises ends the whole job with its message; the benchmark saves what
it measured. MPI never starts in the pytest process itself: every MPI run is a job."""
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mgpu_lab import cli
from mgpu_lab.engines import mpi
from mgpu_lab.measure import mpi_bench

pytestmark = [pytest.mark.integration, pytest.mark.mpi]

JOB_TIMEOUT = 120  # seconds for one mpiexec job (warm Theano cache: 5-10 s)
# float32 tolerance on the parameters after STEPS momentum steps. 'host' stacks exactly
# as the serial engine does (bit-equal here); 'ring' adds float32 terms in another order,
# a few units in the last place of parameters of size ~0.1-1: 1e-6 absolute allows that
# and nothing like a wrong weighting (a plain mean of the uneven splits is far off).
PARAM_ATOL = 1e-6
STEPS = 6
# 47 samples: 24 + 23 on 2 ranks, 16 + 16 + 15 on 3: the batch does not divide by N.
TRAIN = ["train", "--model", "cnn", "--batch", "47", "--steps", str(STEPS),
         "--optimizer", "momentum", "--lr", "0.05", "--no-progress"]


def run_job(n, args, timeout=JOB_TIMEOUT):
    return subprocess.run(mpi.mpiexec_command(n, args), capture_output=True, text=True,
                          timeout=timeout)


def load_checkpoint(path):
    with np.load(path) as z:
        return json.loads(str(z["meta"])), {k: z[k] for k in z.files if k != "meta"}


def test_mpiexec_command_uses_this_python():
    cmd = mpi.mpiexec_command(3, ["-m", "mgpu_lab", "train"], hosts="hosts")
    assert Path(cmd[0]).parent == Path(sys.executable).parent  # the wheel's mpiexec
    assert cmd[1:3] == ["-n", "3"] and cmd[3:5] == ["-f", "hosts"]
    assert cmd[-4:] == [sys.executable, "-m", "mgpu_lab", "train"]
    assert "OPENBLAS_NUM_THREADS" in cmd  # one BLAS thread per rank, on every machine
    with pytest.raises(ValueError, match="n_devices must be >= 1"):
        mpi.mpiexec_command(0, [])


def test_engine_rejects_an_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy 'tree'; choose one of host, ring, "
                                         "sharded, hierarchical"):
        mpi.MPIEngine(None, 1, strategy="tree")


@pytest.fixture(scope="module")
def serial_runs(tmp_path_factory):
    """The serial engine's checkpoint for 2 and 3 devices (in this process: cheapest)."""
    d = tmp_path_factory.mktemp("serial")
    runs = {}
    for n in (2, 3):
        path = d / f"serial-{n}.npz"
        assert cli.main(TRAIN + ["--engine", "serial", "--devices", str(n), "--save", str(path)]) == 0
        runs[n] = load_checkpoint(path)
    return runs


@pytest.mark.timeout(2 * JOB_TIMEOUT)
@pytest.mark.parametrize("n", [pytest.param(2, marks=pytest.mark.slow), 3])  # 3: make test
@pytest.mark.parametrize("strategy", ["host", "ring",
                                      pytest.param("sharded", marks=pytest.mark.slow)])
def test_mpi_training_ends_at_the_serial_parameters(n, strategy, serial_runs, tmp_path):
    # 'sharded': each rank updates its shard with its shard of the momentum; rank 0
    # gathers every shard of the state, so its checkpoint holds all of it.
    path = tmp_path / "mpi.npz"
    devices = ["--devices", str(n)] if n == 2 else []  # n = 3: defaults to the rank count
    job = run_job(n, ["-m", "mgpu_lab", *TRAIN, "--engine", "mpi", "--strategy", strategy,
                      "--save", str(path), *devices])
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stdout.count(f"after {STEPS} steps") == 1  # only rank 0 speaks
    assert f"{n} device(s), engine=mpi ({strategy})" in job.stdout
    meta, arrays = load_checkpoint(path)
    ref_meta, ref = serial_runs[n]
    assert meta["step"] == STEPS and sorted(arrays) == sorted(ref)
    # Same losses every step, and the same parameters and momentum at the end.
    np.testing.assert_allclose([h["loss"] for h in meta["history"]],
                               [h["loss"] for h in ref_meta["history"]], rtol=1e-6)
    worst = max(float(np.max(np.abs(arrays[k] - ref[k]))) for k in ref)
    assert worst <= PARAM_ATOL, f"largest difference to the serial engine: {worst:.3g}"


@pytest.mark.slow
@pytest.mark.timeout(3 * JOB_TIMEOUT)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_mpi_sharded_on_4_ranks_ends_at_the_serial_parameters(optimizer, tmp_path):
    """ZeRO-1 on 4 ranks, 20 steps, 47 samples (12 + 12 + 12 + 11), P not a multiple of 4:
    each rank updates its shard with its shard of the optimizer state; the serial engine
    with 4 devices updates everything at once."""
    args = [*TRAIN, "--optimizer", optimizer, "--lr", "0.01", "--steps", "20", "--devices", "4"]
    paths = {e: tmp_path / f"{e}.npz" for e in ("serial", "mpi")}
    assert cli.main(args + ["--engine", "serial", "--save", str(paths["serial"])]) == 0
    job = run_job(4, ["-m", "mgpu_lab", *args, "--engine", "mpi", "--strategy", "sharded",
                      "--save", str(paths["mpi"])], timeout=3 * JOB_TIMEOUT)
    assert job.returncode == 0, job.stderr[-3000:]
    (meta, got), (_, ref) = load_checkpoint(paths["mpi"]), load_checkpoint(paths["serial"])
    assert meta["step"] == 20 and sorted(got) == sorted(ref)  # the whole optimizer state too
    worst = max(float(np.max(np.abs(got[k] - ref[k]))) for k in ref)
    assert worst <= PARAM_ATOL, f"largest difference to the serial engine: {worst:.3g}"


# Rank 2 is killed (SIGKILL) in the middle of its second step, inside the strategy's
# exchange: MPI's process manager ends the whole job; no rank is left waiting.
KILLED_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from mgpu_lab.presets import digits_model
    from mgpu_lab.data import load_digits
    from mgpu_lab.engines import strategies
    from mgpu_lab.engines.mpi import world
    from mgpu_lab.trainer import DataParallelTrainer

    strategy, extra = sys.argv[1], {"devices_per_node": 2} if sys.argv[1] == "hierarchical" else {}
    comm, calls = world(), []
    cls = strategies.get_strategy(strategy).__class__
    on_device = cls.on_device
    def dying(self, link, dev):
        calls.append(1)
        if comm.rank == 2 and len(calls) == 2:
            print(f"rank 2 killed in step 2 ({strategy})", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return on_device(self, link, dev)
    cls.on_device = dying
    x, y = load_digits()
    tr = DataParallelTrainer(digits_model("cnn"), comm.size, engine="mpi", strategy=strategy, **extra)
    for step in range(3):
        tr.step(x[:40], y[:40])
        print(f"rank {comm.rank}: step {step + 1} done", flush=True)
""")


@pytest.mark.slow
@pytest.mark.timeout(JOB_TIMEOUT)
@pytest.mark.parametrize("strategy", ["sharded", "hierarchical"])
def test_a_rank_killed_mid_step_ends_the_whole_job(strategy, tmp_path):
    import time

    import psutil
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SCRIPT)
    start = time.monotonic()
    job = run_job(4, [script, strategy])
    took = time.monotonic() - start
    assert job.returncode != 0
    assert f"rank 2 killed in step 2 ({strategy})" in job.stdout
    assert "step 2 done" not in job.stdout and job.stdout.count("step 1 done") == 4
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(script) in " ".join(p.info["cmdline"] or [])]
    assert left == [], f"ranks left running after the job ended: {left}"
    print(f"\n{strategy}: the job ended {took:.1f} s after it started (a rank killed in step 2)")


@pytest.mark.slow
@pytest.mark.timeout(3 * JOB_TIMEOUT)
@pytest.mark.parametrize("n, nodes", [(4, ["--devices-per-node", "2"]), (6, ["--devices-per-node", "2"]),
                                      (4, [])])
def test_mpi_hierarchical_ends_at_the_host_parameters(n, nodes, tmp_path):
    """4 ranks as 2 nodes x 2, 6 as 3 x 2 (one machine plays the nodes), and 4 ranks with
    the nodes found by MPI itself (one machine: one node of 4); 47 samples split unevenly.
    The reference is the serial engine with as many devices, in this process (the host
    gather's MPI job ends at its parameters: test_mpi_training_ends_at_the_serial_parameters)."""
    paths = {e: tmp_path / f"{e}.npz" for e in ("serial", "mpi")}
    args = [*TRAIN, "--devices", str(n)]
    assert cli.main(args + ["--engine", "serial", "--save", str(paths["serial"])]) == 0
    job = run_job(n, ["-m", "mgpu_lab", *args, "--engine", "mpi", "--strategy", "hierarchical",
                      "--save", str(paths["mpi"]), *nodes], timeout=3 * JOB_TIMEOUT)
    assert job.returncode == 0, job.stderr[-3000:]
    (_, ref), (_, got) = load_checkpoint(paths["serial"]), load_checkpoint(paths["mpi"])
    worst = max(float(np.max(np.abs(got[k] - ref[k]))) for k in ref)
    assert worst <= PARAM_ATOL, f"largest difference to the serial engine: {worst:.3g}"


@pytest.mark.slow
@pytest.mark.timeout(JOB_TIMEOUT)
def test_mpi_hierarchical_refuses_nodes_that_do_not_divide_the_ranks():
    job = run_job(3, ["-m", "mgpu_lab", *TRAIN, "--engine", "mpi", "--strategy", "hierarchical",
                      "--devices-per-node", "2"])
    assert job.returncode != 0
    assert "3 devices do not make whole nodes of devices_per_node=2" in job.stderr


@pytest.mark.slow
@pytest.mark.timeout(JOB_TIMEOUT)
def test_devices_must_match_the_rank_count():
    job = run_job(2, ["-m", "mgpu_lab", *TRAIN, "--engine", "mpi", "--devices", "3"])
    assert job.returncode != 0
    assert "--devices 3 but mpiexec started 2 rank(s)" in job.stderr


# Runs on 3 ranks: the engine refuses a wrong device count; a non-finite update found on
# the host (rank 0) is raised on every rank with the parameters untouched; then rank 1
# alone gets corrupt data and raises while the others wait in a collective call.
FAILING_SCRIPT = textwrap.dedent("""
    import numpy as np
    from mgpu_lab.presets import digits_model
    from mgpu_lab.data import load_digits
    from mgpu_lab.errors import NonFiniteGradient
    from mgpu_lab.engines.mpi import MPIEngine, world
    from mgpu_lab.trainer import DataParallelTrainer

    comm = world()
    try:
        MPIEngine(digits_model("cnn").spec, comm.size + 1)
    except ValueError as e:
        print(f"rank {comm.rank}: {e}", flush=True)
    x, y = load_digits()
    x, y = x[:40].copy(), y[:40]
    tr = DataParallelTrainer(digits_model("cnn"), comm.size, engine="mpi", strategy="host")
    tr.step(x, y)
    before = tr.model.get_values()
    try:
        tr.step(x * np.float32(3e38), y)  # finite input, infinite activations
    except NonFiniteGradient as e:
        same = all(np.array_equal(a, b) for a, b in zip(before, tr.model.get_values()))
        print(f"rank {comm.rank}: NonFiniteGradient, untouched={same}", flush=True)
    if comm.rank == 1:
        x[3, 0, 2, 2] = np.nan  # only this rank's copy of the batch is corrupt
    tr.step(x, y)
    print(f"rank {comm.rank}: unreachable", flush=True)
""")


@pytest.mark.slow
@pytest.mark.timeout(JOB_TIMEOUT)
def test_a_failing_rank_aborts_the_job_with_its_message(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING_SCRIPT)
    job = run_job(3, [script])
    assert job.returncode != 0
    for r in range(3):
        assert f"rank {r}: MPIEngine: n_devices=4, but this MPI job has 3 rank(s)" in job.stdout
        assert f"rank {r}: NonFiniteGradient, untouched=True" in job.stdout
    assert "unreachable" not in job.stdout
    # rank 1's own error, named, on one line that comes before its (possibly cut) traceback
    assert re.search(r"rank 1 of 3 raised ValueError: x holds 1 NaN or infinite values.*; "
                     r"aborting all ranks\n", job.stderr)


# The MPI ring on 3 ranks, P = 1001 (not divisible by 3): every rank ends with the numpy
# simulation's result bit for bit (the same adds in the same order), and counts the
# bytes it sent to rank+1 through the Sendrecv calls.
RING_SCRIPT = textwrap.dedent("""
    import numpy as np
    from mpi4py import MPI
    from mgpu_lab.collectives import simulate_ring_allreduce
    from mgpu_lab.engines import mpi
    from mgpu_lab.engines.strategies import ring_allreduce

    comm = mpi.world()
    arrays = [np.random.RandomState(i).randn(1001).astype(np.float32) for i in range(comm.size)]
    buf = arrays[comm.rank].copy()
    sent = []
    real = comm.Sendrecv
    comm_sendrecv = lambda sendbuf, **kw: (sent.append(sendbuf[0].nbytes), real(sendbuf, **kw))
    class Counting:  # the same communicator, with Sendrecv counted
        rank, size, Sendrecv = comm.rank, comm.size, staticmethod(comm_sendrecv)
    ring_allreduce(mpi.MPILink(Counting, buf.size, buf.size), buf)
    sim = simulate_ring_allreduce(arrays)
    same = np.array_equal(buf, sim.result[comm.rank])
    print(f"rank {comm.rank}: equal={same} bytes={sum(sent)} expected={sim.bytes_sent[comm.rank]}"
          f" calls={len(sent)}", flush=True)
""")


@pytest.mark.slow
@pytest.mark.timeout(JOB_TIMEOUT)
def test_mpi_ring_is_the_simulated_ring(tmp_path):
    script = tmp_path / "ring.py"
    script.write_text(RING_SCRIPT)
    job = run_job(3, [script])
    assert job.returncode == 0, job.stderr[-3000:]
    for r in range(3):
        m = re.search(rf"rank {r}: equal=True bytes=(\d+) expected=(\d+) calls=4", job.stdout)
        assert m and m.group(1) == m.group(2), job.stdout


@pytest.mark.slow
@pytest.mark.timeout(JOB_TIMEOUT)
def test_comm_benchmark_saves_measurements_and_prediction(tmp_path):
    # Real MPIEngine steps of small MLPs (their graph compiles once); tiny sizes and repeats.
    result = mpi_bench.run(ranks=(2,), sizes_bytes=(4e3, 4e4), strategies=("host", "ring"),
                           repeats=2, timeout=JOB_TIMEOUT, progress=False)
    rows = result["rows"]
    # an MLP sized to each gradient size: its 4P bytes come within a few per cent of it
    assert [r["strategy"] for r in rows] == ["host", "ring", "host", "ring"]
    for r, asked in zip(rows, (4e3, 4e3, 4e4, 4e4)):
        assert abs(r["bytes"] - asked) <= 0.05 * asked, (r["bytes"], asked)
    for r in rows:
        assert 0 < r["comm_min_s"] <= r["comm_s"] <= r["comm_max_s"] and r["comm_repeats"] == 2
        assert r["predicted_comm_s"] > 0 and r["step_s"] > r["comm_s"]
        assert ("comm_gather_s" in r) == (r["strategy"] == "host")  # the host's phases
    link = result["links"]["2"]
    assert link["latency_s"] > 0 and link["bandwidth_Bps"] > 0
    paths, base = mpi_bench.save(result, tmp_path)
    saved = json.loads(paths[0].read_text())
    assert saved["machine"]["cores"] >= 1 and saved["rows"] == rows
    header = paths[1].read_text().splitlines()[0].split(",")
    assert {"n_ranks", "strategy", "bytes", "comm_s", "predicted_comm_s", "cpu"} <= set(header)
    from mgpu_lab.figures import plots  # the book and the CLI draw what measure returns
    fig = plots.mpi_comm(result)
    assert fig.axes and base.parent == tmp_path


@pytest.mark.parametrize("bad", [["--sizes", "1e6,abc"], ["--sizes", "2"], ["--repeats", "0"],
                                 ["--ranks", "0"], ["--strategies", "tree"]])
def test_mpi_bench_rejects_bad_flags(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["mpi-bench", *bad])
    assert exit_.value.code == 2
    assert f"argument {bad[0]}" in capsys.readouterr().err


# Every rank, every strategy, Adam, 3 steps of 47 samples: each rank's trainer and step
# result are right (equal to the serial engine's, run on that rank) or absent (None).
RIGHT_OR_ABSENT_SCRIPT = textwrap.dedent("""
    import numpy as np
    from mgpu_lab.collectives import device_steps, ring_chunks
    from mgpu_lab.data import load_digits
    from mgpu_lab.engines.mpi import world
    from mgpu_lab.engines.update import Update
    from mgpu_lab.models import mlp
    from mgpu_lab.optim import Adam
    from mgpu_lab.trainer import DataParallelTrainer

    comm = world()
    x, y = load_digits()
    x, y = x.reshape(len(x), -1)[:47], y[:47]
    spec = mlp(hidden=(16,), seed=0).spec  # P = 1,210: not a multiple of 3

    def verdict(got, ref):
        if got is None:
            return "absent"
        worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                    for a, b in zip(np.concatenate([np.ravel(g) for g in got]),
                                    np.concatenate([np.ravel(r) for r in ref])))
        return "right" if worst <= 1e-6 else f"WRONG({worst:.3g})"

    with DataParallelTrainer(spec, comm.size, Adam(0.01), engine="serial") as ref:
        for _ in range(3):
            ref.step(x, y)
        ref_values, ref_state = ref.model.get_values(), [a for s in ref.opt_state for a in s]
    for strategy, extra in [("host", {}), ("ring", {}), ("sharded", {}),
                            ("hierarchical", {"devices_per_node": 1})]:
        with DataParallelTrainer(spec, comm.size, Adam(0.01), engine="mpi", strategy=strategy,
                                 snapshot_every=2, **extra) as tr:
            for _ in range(2):
                tr.step(x, y)
            on_host = tr.strategy.updates_on_host
            update = Update(tr.optimizer, tr.opt_state if on_host else None, tr.opt_t)
            result = tr.engine.step(tr.model.get_values() if on_host else None, x, y, update)
            if on_host:
                tr._model.set_values(result.new_values)
                tr._opt_state = result.new_state
            else:
                tr._host_current = False
            tr.opt_t += 1
            state = tr.opt_state
            values = tr.model.get_values()
            print(f"rank {comm.rank} {strategy}: values={verdict(values, ref_values)} "
                  f"state={verdict(None if state is None else [a for s in state for a in s], ref_state)} "
                  f"result_values={verdict(result.new_values, ref_values)} "
                  f"result_state={verdict(None if result.new_state is None else [a for s in result.new_state for a in s], ref_state)}",
                  flush=True)
            P, N, r = tr.model.n_params, comm.size, comm.rank
            chunks = ring_chunks(P, N)
            ring_out = 4 * sum(chunks[c][1] - chunks[c][0] for _, c, _ in device_steps(r, N))
            ring_in = 4 * sum(chunks[c][1] - chunks[c][0] for _, _, c in device_steps(r, N))
            expected = {"host": (0, 0) if r == 0 else (4 * P, 4 * P),
                        "ring": (ring_out, ring_in), "hierarchical": (ring_out, ring_in),
                        "sharded": (ring_out + 8 * (N - 1), ring_in + 8 * (N - 1))}[strategy]
            got = (result.bytes[r]["sent"], result.bytes[r]["received"])
            print(f"rank {r} {strategy}: bytes={'right' if got == expected else f'WRONG{got}!={expected}'}",
                  flush=True)
            sd = tr.engine.state_dict(slots=2)  # collective: rank 0 gathers the shards
            got = None if sd["state"] is None else [a for s in sd["state"] for a in s]
            print(f"rank {comm.rank} {strategy}: consolidated={verdict(got, ref_state) if not on_host else 'host'}",
                  flush=True)
""")


@pytest.mark.slow
@pytest.mark.timeout(3 * JOB_TIMEOUT)
def test_every_ranks_results_are_right_or_absent(tmp_path):
    """On 3 ranks, under every strategy: parameters right on every rank; the optimizer
    state and a step's results right or None (sharded: rank 0 after consolidation only;
    host: rank 0 only), never a partial or uninitialised array; and the bytes each rank
    counted in the step are the algorithm's (P = 1,210 does not divide by 3: the exact
    chunks; the host gather's rank 0 is the host, so its own gradient does not cross)."""
    script = tmp_path / "right_or_absent.py"
    script.write_text(RIGHT_OR_ABSENT_SCRIPT)
    job = run_job(3, [script], timeout=3 * JOB_TIMEOUT)
    assert job.returncode == 0, job.stderr[-3000:]
    out = job.stdout
    assert "WRONG" not in out, out
    for r in range(3):
        for strategy in ("host", "ring", "sharded", "hierarchical"):
            assert re.search(rf"rank {r} {strategy}: values=right", out), out
            assert f"rank {r} {strategy}: bytes=right" in out, out
    # where the state lives: every rank under ring and hierarchical; rank 0 under host;
    # sharded: nobody's whole between snapshots, rank 0's once consolidated
    for r in range(3):
        assert f"rank {r} ring: values=right state=right" in out
        assert f"rank {r} hierarchical: values=right state=right" in out
        assert f"rank {r} sharded: values=right state=absent" in out
        assert re.search(rf"rank {r} sharded: consolidated={'right' if r == 0 else 'absent'}", out)
        assert re.search(rf"rank {r} host: values=right state={'right' if r == 0 else 'absent'}", out)
