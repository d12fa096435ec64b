"""Checkpoints: a model's parameters, its optimizer's state, the step and the history in
one ``.npz`` file, written atomically and read back only after every check passes.

    save_checkpoint(path, spec, values, optimizer_state, step, history)
    read_checkpoint(path) -> Checkpoint(spec, values, optimizer_state, step, history)

The trainer's ``save``/``load`` call these; ``load`` also checks the file against its model.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CheckpointError
from .models import ModelSpec

__all__ = ["FORMAT", "Checkpoint", "save_checkpoint", "read_checkpoint"]

FORMAT = 1  # bumped whenever the layout of the file changes


@dataclass
class Checkpoint:
    """What a checkpoint file holds."""

    spec: ModelSpec
    values: list  # parameter arrays, in the model's ``params`` order
    optimizer_state: dict  # {"name", "t", "state": [slot][param] arrays} (optim.state_dict)
    step: int
    history: list


def save_checkpoint(path, spec, values, optimizer_state, step, history):
    """Write the checkpoint atomically (temp file, fsync, rename); returns the path.

    A failed save leaves the old file, if any, and nothing else.
    """
    path = Path(path)
    meta = {"format": FORMAT, "spec": [spec.name, list(map(list, spec.kwargs))],
            "step": step, "optimizer": optimizer_state["name"], "t": optimizer_state["t"],
            "n_slots": len(optimizer_state["state"]), "history": history}
    arrays = {f"param_{i}": v for i, v in enumerate(values)}
    for s, slot in enumerate(optimizer_state["state"]):
        arrays.update({f"opt_{s}_{i}": a for i, a in enumerate(slot)})
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # make the rename itself survive a power cut
    return path


def read_checkpoint(path):
    """The :class:`Checkpoint` in ``path``, or a :class:`CheckpointError` saying what is wrong."""
    meta, arrays = _read(path)
    n = sum(1 for k in arrays if k.startswith("param_"))
    try:
        values = [arrays[f"param_{i}"] for i in range(n)]
        state = [[arrays[f"opt_{s}_{i}"] for i in range(n)] for s in range(meta["n_slots"])]
    except KeyError as e:
        raise CheckpointError(f"{path} lacks the array {e}: not a complete checkpoint") from None
    return Checkpoint(meta["spec"], values, {"name": meta["optimizer"], "t": meta["t"],
                                             "state": state}, meta["step"], meta["history"])


def _tuplify(v):
    return tuple(_tuplify(a) for a in v) if isinstance(v, list) else v


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path):
    """(meta dict, {name: array}) of a checkpoint file, or a CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
        fmt = meta["format"]
        if fmt == FORMAT:
            name, kwargs = meta["spec"]
            meta["spec"] = ModelSpec(name, tuple((k, _tuplify(v)) for k, v in kwargs))
            missing = {"step", "optimizer", "t", "n_slots", "history"} - set(meta)
            if missing:
                raise KeyError(f"meta lacks {', '.join(sorted(missing))}")
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, KeyError...
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt, or not "
                              f"written by DataParallelTrainer.save): {type(e).__name__}: {e}") from e
    if fmt != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {fmt}, expected {FORMAT}")
    return meta, arrays
