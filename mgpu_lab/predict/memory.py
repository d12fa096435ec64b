"""How much memory one device needs for one training step, from the model's graph.

A device (a GPU, or here a worker process) holds, during a step on a split of ``n`` samples:

* ``parameters``     the model's weights (a full replica on every device);
* ``gradients``      one gradient per weight (also a full replica; allocated once, as the
                     per-device gradient row of :class:`~mgpu_lab.engines.local.DevicePool`);
* ``optimizer``      optimizer state: 0 for SGD, 1x the weights for momentum, 2x for Adam
                     (when the update runs on the device, as in most GPU frameworks);
* ``inputs``         the split itself: images and labels;
* ``activations``    forward results the backward pass reads (ReLU inputs and outputs,
                     conv inputs...), kept from the forward pass until their last use;
* ``transient``      backward temporaries at the busiest moment (gradients w.r.t.
                     activations), on top of the activations still alive then;
* ``workspace``      the largest buffer an op uses internally: Theano's ``CorrMM``
                     unrolls one image at a time into a (Cin*kh*kw, Hout*Wout) matrix.

Only ``inputs``, ``activations`` and ``transient`` grow with ``n``. Every device holds
its own copy of the rest, so N devices of C bytes fit N x one device's batch, but fewer
samples than one device of N x C bytes would (:func:`mgpu_lab.measure.memory_check.measured_limits` shows both).

The activations and temporaries come from replaying the uncompiled gradient graph
(:mod:`mgpu_lab.predict.graph`) in execution order, the way Theano's garbage collector frees
results after their last use, with the two memory savings Theano's compiler makes: views
(transpose, reshape) cost nothing, and an elementwise op writes over an input that dies
there (fusion and in-place; see :data:`IN_PLACE_OPS`). :func:`simulate` gives that
replay; its ``peak`` is what Theano's own memory profiler reports for the compiled
function (see :mod:`mgpu_lab.measure.memory_check`; within 2 % on the test nets).
"""
import weakref
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from .._theano import floatX
from .gpus import BOOK_GPUS, DEFAULT_RESERVED, get_gpu
from .graph import analyse

__all__ = ["OPTIMIZER_SLOTS", "VIEW_OPS", "IN_PLACE_OPS", "TERMS", "Simulation", "simulate",
           "estimate", "max_batch_size", "predicted_limits"]

# Arrays of optimizer state per weight (see mgpu_lab.optim).
OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2}

# Ops whose output is a view of their first input in the compiled graph: no new memory.
VIEW_OPS = {"DimShuffle", "Reshape", "Subtensor", "Rebroadcast", "SpecifyShape", "ViewOp",
            "OutputGuard"}

# Ops whose result may overwrite an input that dies there: elementwise ops (Theano fuses
# them and runs them in place) and the softmax gradient (fused with the cross-entropy
# gradient that feeds it into one op with one output buffer).
IN_PLACE_OPS = {"Elemwise", "SoftmaxGrad"}

TERMS = ("parameters", "gradients", "optimizer", "inputs", "activations", "transient",
         "workspace")


@dataclass
class Simulation:
    """One replay of a step's memory (bytes of intermediate results, not inputs)."""

    peak: int  # most bytes alive at once, gradients counted when produced (as Theano's profiler)
    peak_without_gradients: int  # the same, not counting the parameter gradients
    no_gc: int  # everything ever allocated: the peak with Theano's allow_gc=False
    activations: int  # forward results kept for the backward pass
    workspace: int  # largest op-internal buffer (conv unrolling)
    timeline: list  # bytes alive after each node (for plots)


def _conv_workspace(info):
    """Bytes of the one-image im2col buffer of a conv node (0 for other ops)."""
    if info.op == "AbstractConv2d":  # image (N,Cin,H,W), kernel (Cout,Cin,kh,kw) -> out
        _, cin, kh, kw = info.in_shapes[1]
        _, _, ho, wo = info.out_shapes[0]
    elif info.op == "AbstractConv2d_gradWeights":  # image, topgrad (N,Cout,Ho,Wo) -> kernel
        _, cin, kh, kw = info.out_shapes[0]
        _, _, ho, wo = info.in_shapes[1]
    elif info.op == "AbstractConv2d_gradInputs":  # kernel, topgrad -> image (N,Cin,H,W)
        _, cin, kh, kw = info.in_shapes[0]
        _, _, ho, wo = info.in_shapes[1]
    else:
        return 0
    return 4 * cin * kh * kw * ho * wo


def _uses(graph):
    """How many nodes read each variable (each node counted once)."""
    uses = defaultdict(int)
    for n in graph.nodes:
        for v in set(n.node.inputs):
            uses[v] += 1
    return uses


def _place(info, var, graph, buf_of, holders, uses):
    """The buffer ``var`` lives in: its input's (a view, or an in-place op over an input
    of the same shape that dies here), or ``None`` meaning a new one."""
    node = info.node
    if info.op in VIEW_OPS:
        return buf_of.get(node.inputs[0], "input")  # a view of a function input: free
    if info.op in IN_PLACE_OPS:
        for v in node.inputs:
            b = buf_of.get(v)
            if (b is not None and b != "input" and uses[v] == 1 and holders[b] == {v}
                    and v not in graph.outputs and graph.shapes[v] == graph.shapes[var]
                    and v.dtype == var.dtype):
                return b
    return None


def simulate(model, batch_size):
    """Replay one step's memory at ``batch_size``: :class:`Simulation`."""
    graph = analyse(model, batch_size)
    outputs, grads = set(graph.outputs), set(graph.outputs[1:])
    uses = _uses(graph)
    buf_of = {v: "input" for v in graph.shapes if v.owner is None}  # not counted, as Theano
    size, holders = {}, defaultdict(set)  # buffer -> bytes; buffer -> live vars using it
    state = {"live": 0, "grads": 0, "all": 0}

    def release(v):
        b = buf_of[v]
        if v in outputs or b == "input":
            return
        holders[b].discard(v)
        if not holders[b]:
            state["live"] -= size.pop(b)
            del holders[b]

    peak = peak_ng = 0
    kept, timeline = set(), []
    for info in graph.nodes:
        for var in info.node.outputs:
            b = _place(info, var, graph, buf_of, holders, uses)
            if b is None:
                b = object()  # a new buffer
                size[b] = graph.nbytes(var)
                state["live"] += size[b]
                state["all"] += size[b]
                state["grads"] += size[b] if var in grads else 0
            buf_of[var] = b
            holders[b].add(var)
        peak = max(peak, state["live"])
        peak_ng = max(peak_ng, state["live"] - state["grads"])
        if info.phase == "backward":  # forward results read here are kept until now
            kept.update((buf_of[v], graph.nbytes(v)) for v in info.node.inputs
                        if v.owner is not None and v.owner in graph.forward_nodes
                        and buf_of[v] != "input")
        for v in set(info.node.inputs):
            uses[v] -= 1
            if uses[v] == 0:
                release(v)
        for o in info.node.outputs:
            if uses[o] == 0:  # never read (and not returned): gone at once
                release(o)
        timeline.append(state["live"])
    activations = sum(dict(kept).values())  # one entry per buffer
    workspace = max((_conv_workspace(n) for n in graph.nodes), default=0)
    return Simulation(peak, peak_ng, state["all"], activations, workspace, timeline)


_CACHE = weakref.WeakKeyDictionary()  # model -> {(batch, optimizer): estimate}


def estimate(model, batch_size, optimizer="sgd"):
    """Bytes one device needs for a training step on ``batch_size`` samples.

    Returns ``{term: bytes}`` for every name in :data:`TERMS`, plus ``"total"`` (their
    sum). See the module docstring for what each term counts.
    """
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_SLOTS)}")
    key = (int(batch_size), optimizer)
    cache = _CACHE.setdefault(model, {})
    if key not in cache:
        sim = simulate(model, batch_size)
        p = np.dtype(floatX).itemsize * model.n_params
        est = {"parameters": p, "gradients": p, "optimizer": OPTIMIZER_SLOTS[optimizer] * p,
               "inputs": int(batch_size) * (4 * int(np.prod(model.input_shape)) + 4),
               "activations": sim.activations,
               "transient": max(0, sim.peak_without_gradients - sim.activations),
               "workspace": sim.workspace}
        est["total"] = sum(est.values())
        cache[key] = est
    return dict(cache[key])


def max_batch_size(model, memory_bytes, n_devices=1, optimizer="sgd"):
    """The largest global batch whose split fits on each of ``n_devices`` devices of
    ``memory_bytes``: ``n_devices * m`` where ``m`` is the largest per-device split with
    ``estimate(model, m)["total"] <= memory_bytes`` (0 if not even one sample fits)."""
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    total = lambda n: estimate(model, n, optimizer)["total"]  # noqa: E731
    return int(n_devices) * _largest_fitting(total, int(memory_bytes))


def _largest_fitting(total, capacity):
    """Largest n >= 0 with ``total(n) <= capacity``, for ``total`` increasing in n.

    Memory is nearly affine in n, so a secant step from two known points usually lands
    on the answer at once; it is kept strictly inside the bracket, so it always ends.
    """
    if total(1) > capacity:
        return 0
    lo, hi = 1, None  # total(lo) <= capacity < total(hi)
    while hi is None or hi - lo > 1:
        if hi is None:
            if total(lo + 1) > capacity:
                return lo
            per = max(1, total(lo + 1) - total(lo))  # bytes per extra sample
            n = lo + 1 + max(1, (capacity - total(lo + 1)) // per)
        else:
            per = max(1e-9, (total(hi) - total(lo)) / (hi - lo))
            n = min(hi - 1, max(lo + 1, lo + int((capacity - total(lo)) // per)))
        if total(n) <= capacity:
            lo = n
        else:
            hi = n
    return lo


def predicted_limits(nets, gpus=None, n_gpus=(1, 2, 3, 4), optimizer="momentum",
                     reserved_bytes=DEFAULT_RESERVED, progress=True):
    """Rows ``{model, gpu, memory_gib, n_gpus, per_gpu_batch, global_batch, update_rule,
    reserved_bytes, <terms>}``: the largest batch per GPU kind for 1..N GPUs, predicted
    from the graph.

    ``nets``: {name: model}; ``gpus``: names from :mod:`mgpu_lab.predict.gpus` (default
    its ``BOOK_GPUS``); ``optimizer``: its state is kept on every GPU (default momentum,
    the book's); ``reserved_bytes``: memory per GPU not available to the step (CUDA
    context, framework; default :data:`~mgpu_lab.predict.gpus.DEFAULT_RESERVED`, an
    assumption). The terms are bytes per GPU at the per-GPU batch.
    """
    kinds = [get_gpu(g) for g in (BOOK_GPUS if gpus is None else gpus)]
    rows = []
    for (name, model), gpu in tqdm([(item, g) for item in nets.items() for g in kinds],
                                   desc="limits", disable=not progress):
        per = max_batch_size(model, gpu.memory_bytes - reserved_bytes, 1, optimizer)
        terms = estimate(model, max(per, 1), optimizer)
        for n in n_gpus:
            rows.append({"model": name, "gpu": gpu.name, "memory_gib": gpu.memory_gib,
                         "n_gpus": n, "per_gpu_batch": per, "global_batch": n * per,
                         "update_rule": optimizer, "reserved_bytes": int(reserved_bytes), **terms})
    return rows
