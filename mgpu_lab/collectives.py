"""Collectives by hand: what N devices hold before and after, on lists of numpy arrays.

Notation as in gradients.py: N devices, P numbers per device. A collective takes the
list ``arrays`` (one array per device, device i's is ``arrays[i]``) and returns the list
of what every device holds afterwards. No processes here: these are the definitions the
engines are checked against, and the ring all-reduce the engines run, step by step.

    broadcast       every device gets the root's array
    reduce          the root gets the sum; the others keep their own
    reduce_scatter  device i gets chunk i of the sum
    all_gather      every device gets the N chunks, concatenated
    all_reduce      every device gets the sum (= reduce_scatter then all_gather)

The ring all-reduce (Patarasuk & Yuan 2009) cuts the P numbers into N chunks
(:func:`ring_chunks`) and runs 2(N-1) steps (:func:`ring_schedule`); at every step each
device sends one chunk to its right neighbour, i+1, and receives one from its left,
i-1. Each device sends 2(N-1) chunks in all: 2(N-1)/N * P numbers, whatever N is.
"""
from dataclasses import dataclass

import numpy as np

__all__ = ["broadcast", "reduce", "reduce_scatter", "all_gather", "all_reduce",
           "ring_chunks", "ring_schedule", "device_steps", "RingRun",
           "simulate_ring_allreduce", "ring_bytes_per_device", "format_chunk_table"]


def _check(arrays):
    if not len(arrays):
        raise ValueError("a collective needs at least one device's array")
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"every device must hold an array of the same shape, got {sorted(shapes)}")
    return [np.asarray(a) for a in arrays]


def _check_root(root, n):
    if not 0 <= root < n:
        raise ValueError(f"root must be a device 0..{n - 1}, got {root}")


def broadcast(arrays, root=0):
    """Every device ends with a copy of ``arrays[root]``."""
    arrays = _check(arrays)
    _check_root(root, len(arrays))
    return [arrays[root].copy() for _ in arrays]


def reduce(arrays, root=0):
    """The root ends with the sum of all arrays; every other device keeps its own."""
    arrays = _check(arrays)
    _check_root(root, len(arrays))
    total = np.sum(arrays, axis=0, dtype=arrays[0].dtype)
    return [total if i == root else a.copy() for i, a in enumerate(arrays)]


def reduce_scatter(arrays):
    """Device i ends with chunk i (:func:`ring_chunks` of the flat arrays) of the sum."""
    arrays = _check(arrays)
    total = np.sum([np.ravel(a) for a in arrays], axis=0, dtype=arrays[0].dtype)
    return [total[a:b].copy() for a, b in ring_chunks(total.size, len(arrays))]


def all_gather(chunks):
    """Every device ends with all N chunks, concatenated in device order (flat)."""
    if not len(chunks):
        raise ValueError("a collective needs at least one device's array")
    whole = np.concatenate([np.ravel(c) for c in chunks])
    return [whole.copy() for _ in chunks]


def all_reduce(arrays):
    """Every device ends with the sum of all arrays."""
    arrays = _check(arrays)
    total = np.sum(arrays, axis=0, dtype=arrays[0].dtype)
    return [total.copy() for _ in arrays]


# -- the ring ---------------------------------------------------------------------------
def ring_chunks(P, N):
    """``[(start, stop), ...]``: the N chunks of P numbers; sizes differ by at most one
    (some are empty when P < N)."""
    if N < 1 or P < 0:
        raise ValueError(f"need N >= 1 devices and P >= 0 numbers, got N={N}, P={P}")
    return [(i * P // N, (i + 1) * P // N) for i in range(N)]


def ring_schedule(N):
    """The 2(N-1) steps of the ring all-reduce: ``[(op, [(src, dst, chunk), ...]), ...]``.

    Reduce-scatter, steps s = 0..N-2 (op "add"): device i sends chunk (i - s) mod N to
    device i+1, which adds it to its own copy of that chunk. After them device i holds
    the whole sum of chunk (i + 1) mod N. All-gather, steps s = 0..N-2 (op "copy"):
    device i sends chunk (i + 1 - s) mod N to device i+1, which overwrites its own.
    """
    if N < 1:
        raise ValueError(f"need N >= 1 devices, got {N}")
    steps = []
    for op, first in (("add", 0), ("copy", 1)):
        for s in range(N - 1):
            steps.append((op, [(i, (i + 1) % N, (i + first - s) % N) for i in range(N)]))
    return steps


def device_steps(device, N):
    """Device ``device``'s view of :func:`ring_schedule`: ``[(op, send_chunk, recv_chunk)]``.

    What it sends goes to device+1; what it receives comes from device-1.
    """
    left = (device - 1) % N
    return [(op, sends[device][2], sends[left][2]) for op, sends in ring_schedule(N)]


@dataclass
class RingRun:
    """A simulated ring all-reduce: the result and how it got there."""

    result: list  # every device's array afterwards (all equal the sum)
    tables: list  # tables[k][i][c]: the devices whose numbers device i's chunk c holds after step k
    bytes_sent: list  # bytes each device sent to its right neighbour, all steps together
    chunks: list  # ring_chunks(P, N)


def simulate_ring_allreduce(arrays):
    """Run :func:`ring_schedule` on copies of ``arrays`` (one flat array per device).

    Adds in the same order as the engines' rings (each device adds what it receives to
    its own chunk), so it gives their float32 sums exactly. ``tables[0]`` is the start.
    """
    bufs = [np.ravel(a).copy() for a in _check(arrays)]
    N, P = len(bufs), bufs[0].size
    chunks = ring_chunks(P, N)
    held = [[frozenset([i]) for _ in range(N)] for i in range(N)]  # whose numbers are in chunk c
    tables, sent = [[list(row) for row in held]], [0] * N
    for op, sends in ring_schedule(N):
        # Every device sends before any receives: copy the outgoing chunks first.
        out = [(src, dst, c, bufs[src][slice(*chunks[c])].copy(), held[src][c])
               for src, dst, c in sends]
        for src, dst, c, data, who in out:
            a, b = chunks[c]
            if op == "add":
                bufs[dst][a:b] += data
                held[dst][c] = held[dst][c] | who
            else:
                bufs[dst][a:b] = data
                held[dst][c] = who
            sent[src] += data.nbytes
        tables.append([list(row) for row in held])
    return RingRun([b.reshape(np.shape(arrays[0])) for b in bufs], tables, sent, chunks)


def ring_bytes_per_device(P, N, itemsize=4):
    """What :func:`simulate_ring_allreduce` counts, as a formula: 2(N-1)/N * P * itemsize
    when N divides P; otherwise within one chunk (itemsize bytes per step) of it."""
    return 2 * (N - 1) / N * P * itemsize


def format_chunk_table(table):
    """One text line per device: which devices' numbers each chunk holds, e.g. ``0+2``."""
    lines = ["device | " + " | ".join(f"chunk {c}".ljust(7) for c in range(len(table[0])))]
    for i, row in enumerate(table):
        lines.append(f"{i:>6} | " + " | ".join("+".join(map(str, sorted(w))).ljust(7) for w in row))
    return "\n".join(lines)
