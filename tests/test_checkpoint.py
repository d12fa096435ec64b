"""Checkpoints: atomic saves, bit-for-bit resume in a new process, and clear refusals of
files that are not a checkpoint of this model."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mgpu_lab import models
from mgpu_lab.data import load_digits
from mgpu_lab.errors import CheckpointError
from mgpu_lab.optim import Adam, Momentum
from mgpu_lab.trainer import DataParallelTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 6  # steps before and after the checkpoint


def trainer(optimizer=None, hidden=(64,)):
    """The digits MLP on 2 serial devices; Adam by default, so optimizer state matters."""
    return DataParallelTrainer(models.mlp(n_in=64, hidden=hidden, seed=0), 2,
                               optimizer or Adam(0.01), engine="serial")


def run_python(body, *args, **popen):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(body), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def same_state(a, b):
    """Parameters, optimizer state, step count and losses identical, bit for bit."""
    assert a.step_count == b.step_count and a.opt_t == b.opt_t
    for u, v in zip(a.model.get_values(), b.model.get_values(), strict=True):
        assert u.dtype == v.dtype and np.array_equal(u, v)
    for su, sv in zip(a.opt_state, b.opt_state, strict=True):
        assert all(np.array_equal(u, v) for u, v in zip(su, sv, strict=True))
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An untrained checkpoint of the default trainer (no compile needed to write it)."""
    path = tmp_path_factory.mktemp("ckpt") / "untrained.npz"
    with trainer() as tr:
        tr.save(path)
    return path


# -- resume --------------------------------------------------------------------------------
RESUME = """
    import sys
    from mgpu_lab import models
    from mgpu_lab.data import load_digits
    from mgpu_lab.optim import Adam
    from mgpu_lab.trainer import DataParallelTrainer
    x, y = load_digits(flat=True)
    tr = DataParallelTrainer(models.mlp(n_in=64, hidden=(64,), seed=0), 2, Adam(0.01),
                             engine="serial")
    tr.load(sys.argv[1])
    tr.fit(x, y, batch_size=64, steps=int(sys.argv[3]), progress=False, data_seed=3)
    tr.save(sys.argv[2])
"""


@pytest.mark.slow
def test_k_steps_save_load_in_a_new_process_k_steps_equals_2k_steps(tmp_path):
    x, y = load_digits(flat=True)
    with trainer() as tr:
        tr.fit(x, y, batch_size=64, steps=K, progress=False, data_seed=3)
        values = tr.model.get_values()
        tr.save(tmp_path / "half.npz")
        assert all(np.array_equal(a, b) for a, b in zip(values, tr.model.get_values()))
        tr.fit(x, y, batch_size=64, steps=K, progress=False, data_seed=3)  # 2K uninterrupted
        proc = run_python(RESUME, tmp_path / "half.npz", tmp_path / "resumed.npz", K)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        resumed = trainer().load(tmp_path / "resumed.npz")
        assert tr.step_count == 2 * K and len(tr.opt_state) == 2  # Adam: m and v
        same_state(tr, resumed)


# -- atomic save -----------------------------------------------------------------------------
KILLED_WHILE_SAVING = """
    import io, sys, time
    import numpy as np
    from mgpu_lab import models
    from mgpu_lab.optim import Adam
    from mgpu_lab.trainer import DataParallelTrainer
    tr = DataParallelTrainer(models.mlp(n_in=64, hidden=(64,), seed=0), 2, Adam(0.01),
                             engine="serial")
    tr.load(sys.argv[1])
    tr.model.set_values([v + 1 for v in tr.model.get_values()])  # new state to save
    real_savez = np.savez

    def half_then_hang(f, **arrays):  # write half the file, then wait to be killed
        buf = io.BytesIO()
        real_savez(buf, **arrays)
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
        f.flush()
        print("half written", flush=True)
        time.sleep(600)

    np.savez = half_then_hang
    tr.save(sys.argv[1])
"""


@pytest.mark.slow
def test_a_run_killed_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, saved):
    path = tmp_path / "model.npz"
    path.write_bytes(saved.read_bytes())
    proc = run_python(KILLED_WHILE_SAVING, path)
    try:
        line = proc.stdout.readline()
        assert line == "half written\n", proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert path.read_bytes() == saved.read_bytes()
    with trainer() as before, trainer() as loaded:
        loaded.load(path)
        same_state(before, loaded)  # the previous checkpoint, whole
    tmp = path.with_name(path.name + ".tmp")  # the half-written file is a truncated one
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        trainer().load(tmp)


def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, saved,
                                                                              monkeypatch):
    path = tmp_path / "model.npz"
    path.write_bytes(saved.read_bytes())

    def disk_full(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with trainer() as tr:
        tr.model.set_values([v * 2 for v in tr.model.get_values()])
        with pytest.raises(OSError, match="No space left"):
            tr.save(path)
    assert path.read_bytes() == saved.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


# -- files that are not a checkpoint of this model ---------------------------------------------
def unchanged_after_failed_load(tr, path, match):
    """``tr.load(path)`` raises CheckpointError matching ``match`` and changes nothing."""
    values, t, step = tr.model.get_values(), tr.opt_t, tr.step_count
    with pytest.raises(CheckpointError, match=match):
        tr.load(path)
    assert all(np.array_equal(a, b) for a, b in zip(values, tr.model.get_values()))
    assert (tr.opt_t, tr.step_count) == (t, step)


def test_a_checkpoint_of_another_model_is_refused(saved, cnn):
    with DataParallelTrainer(cnn.spec, 2, Adam(0.01), engine="serial") as tr:
        unchanged_after_failed_load(tr, saved, r"holds a checkpoint of mlp\(.*but this trainer "
                                               r"trains cnn\(")
    with trainer(hidden=(32,)) as tr:  # same builder, other size
        unchanged_after_failed_load(tr, saved, r"hidden=\(64,\).*hidden=\(32,\)")


def test_a_checkpoint_of_another_optimizer_is_refused(saved):
    with trainer(optimizer=Momentum(0.01)) as tr:
        unchanged_after_failed_load(tr, saved, "optimizer.*'adam'.*'momentum'")


def rewrite(src, dst, meta_change=None, array_change=None):
    """Copy checkpoint ``src`` to ``dst`` with its meta dict and/or arrays edited."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    (meta_change or (lambda m: None))(meta)
    (array_change or (lambda a: None))(arrays)
    np.savez(dst, meta=np.array(json.dumps(meta)), **arrays)
    return dst


def test_a_checkpoint_with_wrong_shapes_is_refused_and_nothing_is_loaded(tmp_path, saved):
    def later(meta):  # looks like a trained checkpoint: the optimizer state would change
        meta.update(step=7, t=7, n_slots=2)

    def states_and_bad_param(arrays):
        for s in range(2):
            arrays.update({f"opt_{s}_{i}": np.zeros_like(arrays[f"param_{i}"]) for i in range(4)})
        arrays["param_2"] = np.zeros((3, 3), np.float32)  # (64, 10) in this model

    bad = rewrite(saved, tmp_path / "bad.npz", later, states_and_bad_param)
    with trainer() as tr:
        unchanged_after_failed_load(tr, bad, r"out.W.*\(64, 10\).*\(3, 3\)")


@pytest.mark.parametrize("damage", ["empty", "first 100 bytes", "half", "all but the last byte",
                                    "one flipped bit in a weight"])
def test_a_truncated_or_corrupt_checkpoint_is_refused(tmp_path, saved, damage):
    data = bytearray(saved.read_bytes())
    if damage == "one flipped bit in a weight":
        at = data.index(b"param_0.npy") + 2000  # inside the 16 KiB of fc1.W's data
        data[at] ^= 0x10
    else:
        data = data[:{"empty": 0, "first 100 bytes": 100, "half": len(data) // 2,
                      "all but the last byte": len(data) - 1}[damage]]
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(data))
    with trainer() as tr:
        unchanged_after_failed_load(tr, path, "not a readable checkpoint .truncated or corrupt")


@pytest.mark.parametrize("content", [b"", b"hello, I am a text file\n", os.urandom(5000)],
                         ids=["empty", "text", "random bytes"])
def test_a_garbage_file_is_refused(tmp_path, content):
    path = tmp_path / "garbage.npz"
    path.write_bytes(content)
    with trainer() as tr:
        unchanged_after_failed_load(tr, path, "not a readable checkpoint")


def test_other_npz_files_and_missing_files_are_refused(tmp_path, saved):
    np.savez(tmp_path / "weights.npz", w=np.zeros(3))  # a valid .npz, but no checkpoint
    not_a_dict = tmp_path / "list.npz"
    np.savez(not_a_dict, meta=np.array("[1, 2]"))
    newer = rewrite(saved, tmp_path / "newer.npz", lambda m: m.update(format=99))
    no_spec = rewrite(saved, tmp_path / "no_spec.npz", lambda m: m.pop("spec"))
    with trainer() as tr:
        unchanged_after_failed_load(tr, tmp_path / "weights.npz", "not a readable checkpoint")
        unchanged_after_failed_load(tr, not_a_dict, "not a readable checkpoint")
        unchanged_after_failed_load(tr, newer, "format 99, expected 1")
        unchanged_after_failed_load(tr, no_spec, "not a readable checkpoint")
        unchanged_after_failed_load(tr, tmp_path / "missing.npz", "no checkpoint at")


def test_a_checkpoint_written_before_the_optimizer_kept_zeros_still_loads(tmp_path):
    """Format 1 as the trainer wrote it before optimizers became pure rules: a run saved
    before its first step stored no state arrays (n_slots 0, t 0). It loads as zeros, and
    training from it equals training from scratch."""
    from mgpu_lab.checkpoint import save_checkpoint
    fresh = trainer(Momentum(0.1))
    path = save_checkpoint(tmp_path / "old.npz", fresh.spec, fresh.model.get_values(),
                           {"name": "momentum", "t": 0, "state": []}, 0, [])
    loaded = trainer(Momentum(0.1)).load(path)
    assert loaded.opt_t == 0 and len(loaded.opt_state) == 1
    assert all(not a.any() for a in loaded.opt_state[0])
    x, y = load_digits(flat=True)
    for tr in (fresh, loaded):
        tr.fit(x, y, batch_size=32, steps=3, progress=False)
    same_state(fresh, loaded)
