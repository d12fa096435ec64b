"""Exercises that check themselves: ``check("3.1", answer)`` says right or not, with a
hint when not, and never prints the expected answer.

Expected answers are computed by the library wherever it can (split sizes, parameter
counts, bytes, predicted limits), so they follow the code rather than a typed-in table.
Each exercise states its tolerance; :data:`ANSWERS` lists every exercise that checks
itself (the teacher's guide prints that list).

    from mgpu_lab.exercises import check
    check("3.1", [3, 3, 2, 2])    # prints: 3.1: right.
"""
import copy
import functools
import math
import textwrap
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .collectives import ring_bytes_per_device
from .engines.pinning import cores
from .predict import costmodel, time_to_accuracy
from .models import resnet_like
from .predict.batch_scaling import fit_tradeoff
from .predict.critical import critical_batch_table
from .predict.gpus import get_gpu, usable_bytes
from .predict.memory import estimate, max_batch_size, shard_sizes, state_bytes_per_parameter
from .presets import digits_model
from .split import split_sizes
from .statistics import gradient_noise_scale

__all__ = ["Answer", "ANSWERS", "check", "is_right", "checked_exercises", "EXERCISE_13_1",
           "EXERCISE_13_2"]


@dataclass(frozen=True)
class Answer:
    """How one exercise is checked: the expected value (computed on demand), the relative
    tolerance for numbers (0: exact), what kind of answer is asked for, and the hint."""

    expected: Callable[[], object]
    rel_tol: float
    shape: str  # what to write, e.g. "a list of 4 integers"
    hint: str

    def __post_init__(self):
        # Computed once per process: some build a ResNet-50 graph (seconds), and a student
        # may call check() many times. A copy each time, so that no caller can change it.
        once = functools.cache(self.expected)
        object.__setattr__(self, "expected", lambda: copy.deepcopy(once()))


def _plain_mean_worst_factor(batch=5, n=4):
    """Exercise 4.2: the largest weight the plain mean gives a sample, over the right 1/B."""
    sizes = split_sizes(batch, n)  # a sample in split i weighs (1/N)(1/n_i) in the plain mean
    return max(1.0 / (n * s) for s in sizes) * batch


def _vgg16_bytes(slots):
    """Exercise 7.1: parameters + gradients (+ optimizer slots) of VGG-16, float32 bytes."""
    return (2 + slots) * 4 * 138_357_544


def _gpus_for_512():
    """Exercise 7.2: V100s and A100s for a global batch of 512 (ResNet-50-like, 224 px,
    momentum, each GPU's memory less the reserve), as chapter 7 computes limits."""
    net = resnet_like(50, image_size=224)
    return [math.ceil(512 / max_batch_size(net, usable_bytes(g), optimizer="momentum"))
            for g in ("V100", "A100")]


def _doubling_beats_ring_below(n=8, bw=25e9, latency=10e-6):
    """Exercise 8.3: the size where recursive doubling's and the ring's times cross (both
    affine in the size)."""
    ring = lambda s: costmodel.ring_allreduce_seconds(s, n, bw, latency)  # noqa: E731
    doubling = lambda s: costmodel.recursive_doubling_seconds(s, n, bw, latency)  # noqa: E731
    return ((doubling(0) - ring(0))
            / ((ring(1e9) - ring(0)) - (doubling(1e9) - doubling(0))) * 1e9)


def _digits_memory_line(lo=10, hi=20):
    """Exercise 7.3: the digits CNN's memory estimate is affine in n from n = 2 on (at
    n = 1 the activations and the backward temporaries are a few bytes off that line), so
    its slope between two larger n is the cost of one more sample, and the line's value at
    n = 0 is what comes before the first sample."""
    net = digits_model("cnn")
    low, high = estimate(net, lo)["total"], estimate(net, hi)["total"]
    per_sample = (high - low) // (hi - lo)
    return [per_sample, low - lo * per_sample]


def _gpus_for_adam_state(n_params, stage):
    """Exercise 9.3: the fewest V100s whose usable memory holds ``n_params`` parameters'
    Adam model state at ZeRO ``stage`` (activations and the gathered layer left out)."""
    return next(n for n in range(1, 100_000) if n_params * state_bytes_per_parameter(
        "adam", stage, n) <= usable_bytes("V100"))


# Exercise 13.1's data: two devices of 64 samples, their mean gradients' squared norms,
# and the stacked batch gradient's (chapter 13 states them).
EXERCISE_13_1 = ([64, 64], [1.30, 1.10], 0.70)
# Exercise 13.2's sweep: batch sizes and the steps each took to the target.
EXERCISE_13_2 = ((16, 32, 64, 128, 256, 512, 1024), (3400, 1800, 1000, 600, 400, 300, 250))


def _fewest_hours_n():
    """Exercise 13.3: the N (1, 2, 4, ..., 1024) with the shortest predicted time to target
    for ResNet-50 on ImageNet (B_crit = IMAGENET_B_CRIT = 32,768, assumed; the exercise
    states it), V100s, host gather, each GPU at its memory limit (momentum), as chapter 13
    computes it."""
    work = time_to_accuracy.imagenet_resnet50(time_to_accuracy.IMAGENET_B_CRIT)
    b_mem = time_to_accuracy.memory_limit(work.model, "V100")
    return time_to_accuracy.best_plan(work, "V100", [2 ** k for k in range(11)], [b_mem],
                                      "host").n_gpus


ANSWERS = {
    "1.1": Answer(lambda: len(cores()), 0, "an integer",
                  "the pool pins one device to each logical CPU (hardware thread) this "
                  "notebook's process may run on, not to each physical core: which function of "
                  "mgpu_lab.engines.pinning lists those CPUs?"),
    "2.1": Answer(lambda: 299 ** 2 / 32 ** 2, 0.01, "a number (the ratio of pixels)",
                  "pixels grow with the square of the side."),
    "3.1": Answer(lambda: split_sizes(10, 4), 0, "a list of 4 integers",
                  "10 = 4 x 2 + 2: who takes the 2 extra samples, the first devices or the last?"),
    "3.2": Answer(lambda: 4 * digits_model("cnn").n_params, 0,
                  "an integer: bytes one device sends back per step",
                  "count weights and biases of conv1, conv2 and the softmax layer, then 4 bytes each."),
    "3.3": Answer(lambda: 4 * digits_model("cnn").n_params, 0,
                  "an integer: bytes of momentum state on the host",
                  "momentum keeps one velocity array per parameter array, float32."),
    "4.2": Answer(_plain_mean_worst_factor, 1e-9, "a number (a factor, e.g. 1.5)",
                  "find the split sizes first; in the plain mean a sample weighs its device's "
                  "share times its share of its device. Compare that with its weight in the "
                  "mean over the whole batch."),
    "6.1": Answer(lambda: [1 / (0.05 + 0.95 / n) for n in (2, 4, 8)] + [1 / 0.05], 0.005,
                  "a list of 4 numbers: speed-ups on 2, 4, 8 devices and the limit",
                  "Amdahl: speed-up = 1 / (s + (1 - s) / N) with s the serial fraction."),
    "7.1": Answer(lambda: [_vgg16_bytes(0), _vgg16_bytes(2)], 0.001,
                  "a list of 2 byte counts: with SGD, with Adam",
                  "parameters and gradients are 4 bytes each per parameter; Adam adds two arrays."),
    "8.1": Answer(lambda: ring_bytes_per_device(25.6e6, 8), 0.01,
                  "a number: bytes each GPU sends in one ring all-reduce",
                  "2(N - 1) steps, each sending one chunk of P/N numbers, 4 bytes each."),
    "8.3": Answer(_doubling_beats_ring_below, 0.02, "a number: the gradient size in bytes",
                  "ring: 2(N-1)/N S/b + 2(N-1) a; recursive doubling: log2(N) (S/b + a); "
                  "set them equal."),
    "9.1": Answer(lambda: [8 * 138_357_544, 8 * max(shard_sizes(138_357_544, 8))], 0,
                  "a list of 2 byte counts: stage 0, stage 1",
                  "Adam keeps 2 float32 numbers per parameter; at stage 1 a GPU keeps them for "
                  "its shard only, memory.shard_sizes(P, 8)."),
    "9.2": Answer(lambda: [ring_bytes_per_device(resnet_like(50).n_params, 4),
                           1.5 * ring_bytes_per_device(resnet_like(50).n_params, 4)], 0.001,
                  "a list of 2 byte counts: stage 1, stage 3",
                  "stage 1: a reduce-scatter and an all-gather, (N-1)/N 4P bytes each; stage 3 "
                  "gathers the parameters once more for the backward pass."),
    "9.3": Answer(lambda: [_gpus_for_adam_state(2e9, 1), _gpus_for_adam_state(2e9, 3)], 0,
                  "a list of 2 integers: GPUs with stage 1, with stage 3",
                  "bytes per parameter on a GPU: 4 + 4 + 8/N at stage 1, 16/N at stage 3; "
                  "compare 2e9 times that with gpus.usable_bytes('V100')."),
    "10.1": Answer(lambda: [costmodel.host_gather_seconds(100e6, 4, 16e9, latency=0),
                           costmodel.ring_allreduce_seconds(100e6, 4, get_gpu("V100").ring_bw(4),
                                                            latency=0)], 0.01,
                  "a list of 2 times in seconds: host gather over PCIe, one ring over NVLink",
                  "with S = 4P bytes of gradient (P parameters): host: 2N transfers of S "
                  "bytes, one after another on the host's link; ring: 2(N-1)/N S bytes over "
                  "each GPU's link to its neighbour, at the slowest pair's NVLink bandwidth."),
    # bw: all six NVLinks together (peer_bw, 150 GB/s), as the question says; one ring of
    # 8 V100s (ring_bw(8), 50 GB/s) gives 3 times this b*, which the solution discusses
    "10.4": Answer(lambda: critical_batch_table(gpus=["V100"])[0]["NVLink / peer link"], 0.02,
                   "a number: samples per GPU, with bw all six NVLinks together",
                   "6 P b / R = 2 x 4P / bw: solve for b (P cancels); R = the charged peak x "
                   "calibration_for's efficiency (the roofline's compute efficiency, not "
                   "efficiency_for's FLOPs-only one); bw = the V100's peer_bw in the catalogue "
                   "(all its links), not one ring's ring_bw."),
    "11.1": Answer(lambda: costmodel.efficiency_for(get_gpu("P100"))[0], 0.02,
                   "a number: the P100's sustained fraction of its fp32 peak (e.g. 0.3)",
                   "efficiency = images/s x FLOPs per image / peak FLOP/s."),
    "12.1": Answer(lambda: [256 // 4, len(split_sizes(256 // 4, math.ceil(256 / 4 / 12)))], 0,
                   "a list of 2 integers: samples per GPU per step, micro-batches per GPU",
                   "each GPU's share of 256 is cut into micro-batches of at most 12."),
    "13.1": Answer(lambda: gradient_noise_scale(*EXERCISE_13_1).b_simple, 0.01,
                   "a number: B_simple in samples",
                   "estimate |G|^2 = (B |g|^2 - n |g_i|^2) / (B - n) and tr(Sigma) = "
                   "(|g_i|^2 - |g|^2) / (1/n - 1/B) for each device, average them (equal "
                   "splits), then divide."),
    "13.2": Answer(lambda: fit_tradeoff(*EXERCISE_13_2).b_crit, 0.05,
                   "a number: B_crit in samples",
                   "S(B) = S_min (1 + B_crit / B): S_min is where the steps level off, and at "
                   "B = B_crit a run takes twice S_min; or fit S against 1/B."),
    "13.3": Answer(_fewest_hours_n, 0, "an integer: the number of GPUs",
                   "time = S(N b_mem) x step(N, b_mem): compute both for N = 1, 2, 4, ... "
                   "with time_to_accuracy.time_to_target; the host gather's exchange grows "
                   "with N."),
    "7.2": Answer(_gpus_for_512, 0, "a list of 2 integers: V100s, A100s",
                  "per-GPU limit from memory.max_batch_size, then divide 512 by it and round up."),
    "7.3": Answer(_digits_memory_line, 0,
                  "a list of 2 byte counts: per extra sample, the line's value at n = 0",
                  "memory.estimate(digits, n)['total'] is affine in n from n = 2 on (n = 1 lies "
                  "a little off the line): take two larger n, e.g. 10 and 20."),
}


def checked_exercises():
    """The exercises that check themselves, in book order."""
    return sorted(ANSWERS, key=lambda k: tuple(int(p) for p in k.split(".")))


def _close(got, want, rel_tol):
    if isinstance(want, (list, tuple)):
        return (isinstance(got, (list, tuple, np.ndarray)) and len(got) == len(want)
                and all(_close(g, w, rel_tol) for g, w in zip(got, want)))
    try:
        got = float(got)
    except (TypeError, ValueError):
        return False
    if rel_tol == 0:
        return got == float(want)
    return math.isclose(got, float(want), rel_tol=rel_tol)


def is_right(exercise, answer):
    """True if ``answer`` is right for ``exercise`` (to its tolerance); quiet."""
    if exercise not in ANSWERS:
        raise ValueError(f"exercise {exercise!r} does not check itself; those that do: "
                         f"{', '.join(checked_exercises())}")
    a = ANSWERS[exercise]
    return _close(answer, a.expected(), a.rel_tol)


def check(exercise, answer, grading=False):
    """Print whether ``answer`` is right for ``exercise`` and, if not, a hint; returns the
    verdict. Never prints the expected answer. ``grading=True`` (nbgrader's test cells,
    book/_ext/assignments.py): a wrong or missing answer raises AssertionError, no hint."""
    a = ANSWERS.get(exercise)
    if a is None:
        is_right(exercise, answer)  # raises the clear error
    tol = "exactly" if a.rel_tol == 0 else f"to within {a.rel_tol:.1%}"
    if grading and (answer is None or not is_right(exercise, answer)):
        raise AssertionError(f"Exercise {exercise}: not right ({a.shape}, checked {tol})")
    if answer is None:
        # folded to the page's 88 columns (mgpu_lab.figures.tables.WIDTH)
        print(textwrap.fill(f"Exercise {exercise}: write your answer ({a.shape}) in `answer`, "
                            f"then run this cell again.", 88, break_on_hyphens=False))
        return False
    if is_right(exercise, answer):
        print(f"Exercise {exercise}: right ({tol}).")
        return True
    print(f"Exercise {exercise}: not yet ({a.shape}, checked {tol}). Hint: {a.hint}")
    return False
