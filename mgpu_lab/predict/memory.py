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

Only ``inputs``, ``activations`` and ``transient`` grow with ``n``. Without sharding every
device holds its own copy of the rest, so N devices of C bytes fit N x one device's batch, but fewer
samples than one device of N x C bytes would (:func:`mgpu_lab.measure.memory_check.measured_limits` shows both).

The activations and temporaries come from replaying the uncompiled gradient graph
(:mod:`mgpu_lab.predict.graph`) in execution order, the way Theano's garbage collector frees
results after their last use, with the two memory savings Theano's compiler makes: views
(transpose, reshape) cost nothing, and an elementwise op writes over an input that dies
there (fusion and in-place; see :data:`IN_PLACE_OPS`). :func:`simulate` gives that
replay; its ``peak`` is what Theano's own memory profiler reports for the compiled
function (see :mod:`mgpu_lab.measure.memory_check`; within 2 % on the test nets).

Sharded data parallelism (ZeRO, Rajbhandari et al. 2020; PyTorch FSDP, Zhao et al. 2023)
cuts the P flat parameters into the N :func:`~mgpu_lab.collectives.ring_chunks` (sizes
differ by at most one); device i owns chunk (i + 1) mod N, the one the ring's
reduce-scatter completes on it (as the engines' ShardedOptimizer), its *shard* of s_i.
Per device, in float32 numbers, with L the largest layer's parameters (a layer: names
sharing the part before the last dot, ``fc1.W`` and ``fc1.b``), at ZeRO stage ``sharding``:

    stage   parameters   gradients   optimizer
    0       P            P           k P        (k: 0 SGD, 1 momentum, 2 Adam)
    1       P            P           k s_i
    2       P            s_i + L     k s_i
    3       s_i + L      s_i + L     k s_i

At stage 2 a layer's gradient is computed whole, then reduce-scattered; at stage 3 a
layer's parameters are all-gathered just before it runs and freed after: so the largest
layer's full gradient (and parameters) exist for a moment, counted on top of the shard
with the activations (an upper bound: they need not peak together). On one device every
stage is stage 0.

Stages 2 and 3 are predicted only. The simulated devices run stage 1 for real
(``strategy="sharded"``), not 2 or 3: Theano compiles the whole forward and backward pass
as one function, which returns every layer's full gradient at once, so no device can drop
a gradient before the next is made, nor fetch a layer's parameters just when it runs.

Precision (``precision=``, :mod:`mgpu_lab.predict.precision`): "fp32" and "tf32" store
float32 (4 bytes a value); "fp16" and "bf16" are mixed precision, counted as ZeRO counts
it (Rajbhandari et al. 2020): 16-bit parameters (the working copy), gradients, inputs,
activations, backward temporaries and workspace (2 bytes a value; integer buffers keep
their size), and float32 master weights and optimizer state, all under ``optimizer``:

    precision      parameters   gradients   optimizer (per parameter, before sharding)
    fp32, tf32     4            4           4 k
    fp16, bf16     2            2           4 + 4 k    (Adam, k = 2: ZeRO's 2 + 2 + 12)

The graph is replayed with 2-byte floats, so the 16-bit peak is found where it is, not
taken as half the float32 one (it is half, but for the few integer buffers). PyTorch's
autocast and Apex O1 keep float32 weights and gradients instead, about 2 bytes per
parameter more than this count (:mod:`mgpu_lab.predict.precision`).

Activation recomputation (``recompute=True``; gradient checkpointing, Chen et al. 2016):
the L forward results the backward pass reads, in the order the forward pass makes them,
are cut into k = ceil(sqrt(L)) consecutive segments (sizes differ by at most one); only
the last result of each segment (a checkpoint) is kept, and a segment's other results
are made again, from the checkpoint before it, when the backward pass reaches it. The
activations term is then the k checkpoints plus the largest segment's other results
(:func:`recomputed_activations`), about 2 sqrt(L) results instead of L; the price is about
one more forward pass per step (:func:`mgpu_lab.predict.costmodel.predict`'s
``recompute``). The segments are equal in count, not in bytes, and a residual branch
that crosses a checkpoint is not counted apart: an approximation of the paper's plan.
"""
import math
import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..collectives import ring_chunks
from ..split import split_bounds
from ..validate import check_n_devices
from .gpus import BOOK_GPUS, DEFAULT_RESERVED, get_gpu
from .graph import analyse
from .precision import check_precision, master_bytes, value_bytes

__all__ = ["OPTIMIZER_SLOTS", "SHARDING_STAGES", "VIEW_OPS", "IN_PLACE_OPS", "TERMS",
           "MODEL_STATE", "Simulation", "simulate", "recomputed_activations", "check_sharding",
           "layer_sizes",
           "shard_sizes", "model_state", "predicted_device_memory", "state_bytes_per_parameter",
           "estimate", "split_limits", "max_batch_size", "predicted_limits", "STEP_TERMS"]

# Arrays of optimizer state per weight (see mgpu_lab.optim).
OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2}

# ZeRO stages (Rajbhandari et al. 2020): what each device keeps only 1/N of.
SHARDING_STAGES = {0: "none (every device holds everything)",
                   1: "optimizer state sharded (ZeRO-1)",
                   2: "optimizer state and gradients sharded (ZeRO-2)",
                   3: "optimizer state, gradients and parameters sharded (ZeRO-3, FSDP)"}

# Ops whose output is a view of their first input in the compiled graph: no new memory.
VIEW_OPS = {"DimShuffle", "Reshape", "Subtensor", "Rebroadcast", "SpecifyShape", "ViewOp",
            "OutputGuard"}

# Ops whose result may overwrite an input that dies there: elementwise ops (Theano fuses
# them and runs them in place) and the softmax gradient (fused with the cross-entropy
# gradient that feeds it into one op with one output buffer).
IN_PLACE_OPS = {"Elemwise", "SoftmaxGrad"}

TERMS = ("parameters", "gradients", "optimizer", "inputs", "activations", "transient",
         "workspace")
MODEL_STATE = TERMS[:3]  # the terms sharding divides; the rest depend on the split only


@dataclass
class Simulation:
    """One replay of a step's memory (bytes of intermediate results, not inputs)."""

    peak: int  # most bytes alive at once, gradients counted when produced (as Theano's profiler)
    peak_without_gradients: int  # the same, not counting the parameter gradients
    no_gc: int  # everything ever allocated: the peak with Theano's allow_gc=False
    activations: int  # forward results kept for the backward pass
    workspace: int  # largest op-internal buffer (conv unrolling)
    timeline: list  # bytes alive after each node (for plots)
    kept: list = field(default_factory=list)  # bytes of each kept result, in forward order

    @property
    def recomputed(self):
        """The activations with recomputation: :func:`recomputed_activations` of ``kept``."""
        return recomputed_activations(self.kept)


def recomputed_activations(kept):
    """Bytes of activations alive at once with recomputation (Chen et al. 2016), given
    ``kept``, the bytes of the L forward results the backward pass reads, in forward
    order: cut into k = ceil(sqrt(L)) consecutive segments whose sizes differ by at most
    one, the last result of each kept (k checkpoints), the largest segment's others made
    again while the backward pass goes through it: sum(checkpoints) + max(segment rest)."""
    kept = [int(b) for b in kept]
    if not kept:
        return 0
    bounds = split_bounds(len(kept), math.ceil(math.sqrt(len(kept))))
    checkpoints = sum(kept[b - 1] for _, b in bounds)
    return checkpoints + max(sum(kept[a:b - 1]) for a, b in bounds)


def _conv_workspace(info, float_bytes=4):
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
    return float_bytes * cin * kh * kw * ho * wo


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


def _sizer(graph, float_bytes):
    """Bytes of a variable with its floats stored in ``float_bytes`` bytes (4: as the
    graph's float32; 2: 16-bit); other dtypes keep their size."""
    if float_bytes == 4:
        return graph.nbytes
    return lambda v: (int(np.prod(graph.shapes[v], dtype=np.int64)) * float_bytes
                      if v.dtype == "float32" else graph.nbytes(v))


def simulate(model, batch_size, float_bytes=4):
    """Replay one step's memory at ``batch_size``: :class:`Simulation`. ``float_bytes``:
    bytes of a stored float (4: float32; 2: the 16-bit activations of mixed precision)."""
    graph = analyse(model, batch_size)
    nbytes = _sizer(graph, float_bytes)
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
    kept, born, timeline = {}, {}, []  # kept buffer -> bytes; buffer -> when it was made
    for info in graph.nodes:
        for var in info.node.outputs:
            b = _place(info, var, graph, buf_of, holders, uses)
            if b is None:
                b = object()  # a new buffer
                born[b] = len(born)
                size[b] = nbytes(var)
                state["live"] += size[b]
                state["all"] += size[b]
                state["grads"] += size[b] if var in grads else 0
            buf_of[var] = b
            holders[b].add(var)
        peak = max(peak, state["live"])
        peak_ng = max(peak_ng, state["live"] - state["grads"])
        if info.phase == "backward":  # forward results read here are kept until now
            kept.update((buf_of[v], nbytes(v)) for v in info.node.inputs
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
    activations = sum(kept.values())  # one entry per buffer
    workspace = max((_conv_workspace(n, float_bytes) for n in graph.nodes), default=0)
    in_order = [kept[b] for b in sorted(kept, key=born.get)]
    return Simulation(peak, peak_ng, state["all"], activations, workspace, timeline, in_order)


# -- model state: parameters, gradients, optimizer, with and without sharding ------------
def check_sharding(sharding):
    """``sharding`` as an int 0..3 (the ZeRO stage), or ``ValueError`` saying what is allowed."""
    if isinstance(sharding, (int, np.integer)) and not isinstance(sharding, bool) \
            and int(sharding) in SHARDING_STAGES:
        return int(sharding)
    stages = "; ".join(f"{k} = {v}" for k, v in SHARDING_STAGES.items())
    raise ValueError(f"sharding must be a ZeRO stage 0, 1, 2 or 3 ({stages}), "
                     f"got {sharding!r}")


def _check_optimizer(optimizer):
    """An optimizer's name: a name, or anything with a ``.name`` (an optimizer object)."""
    name = getattr(optimizer, "name", optimizer)
    if name not in OPTIMIZER_SLOTS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZER_SLOTS)}")
    return name


def layer_sizes(model):
    """``{layer: parameter count}``, a layer being the parameters whose names share the
    part before the last dot (``conv1.W`` and ``conv1.b`` make ``conv1``), in model order."""
    sizes = {}
    for p, shape in zip(model.params, model.param_shapes):
        layer = (p.name or "?").rsplit(".", 1)[0]
        sizes[layer] = sizes.get(layer, 0) + int(np.prod(shape))
    return sizes


def shard_sizes(n_params, n_devices):
    """How many of the P flat parameters each device owns: device i owns chunk (i + 1) mod N
    of :func:`~mgpu_lab.collectives.ring_chunks` (sizes differ by at most one), the chunk
    the ring's reduce-scatter leaves complete on it, as in the engines."""
    n = check_n_devices(n_devices)
    sizes = [b - a for a, b in ring_chunks(int(n_params), n)]
    return [sizes[(i + 1) % n] for i in range(n)]


def _state_bytes(optimizer, precision):
    """(bytes per parameter of the weights, of the gradients, of the optimizer's float32
    state with the master weights, if any), by the precision table in the docstring."""
    k = OPTIMIZER_SLOTS[_check_optimizer(optimizer)]
    vb = value_bytes(check_precision(precision))
    return vb, vb, 4 * k + master_bytes(precision)


_SIZES = weakref.WeakKeyDictionary()  # model -> (P, the largest layer's parameters)


def _sizes(model):
    """(P, L) of ``model``, counted once (an explorer's grid asks thousands of times)."""
    if model not in _SIZES:
        _SIZES[model] = (int(model.n_params), max(layer_sizes(model).values()))
    return _SIZES[model]


def model_state(model, optimizer="sgd", sharding=0, n_devices=1, precision="fp32"):
    """Bytes of parameters, gradients and optimizer state on each device: a list of N
    dicts ``{parameters, gradients, optimizer}``, by the tables in the module docstring
    (``precision``: "fp16" and "bf16" keep 16-bit weights and gradients and float32
    master weights under ``optimizer``)."""
    w, g, o = _state_bytes(optimizer, precision)
    stage, n = check_sharding(sharding), check_n_devices(n_devices)
    P, L = _sizes(model)
    if n == 1:
        stage = 0  # one device holds all: nothing to split or to gather
    gathered = L if stage >= 2 else 0  # the largest layer, a transient
    rows = []
    for s in shard_sizes(P, n):
        rows.append({"parameters": w * (s + gathered if stage >= 3 else P),
                     "gradients": g * (s + gathered if stage >= 2 else P),
                     "optimizer": o * (s if stage >= 1 else P)})
    return rows


def state_bytes_per_parameter(optimizer="sgd", sharding=0, n_devices=1, precision="fp32"):
    """Bytes of model state (parameters, gradients, optimizer) per parameter on one
    device, as P grows large: the table in the module docstring divided by P, with the
    shard s_i ~ P/N and the gathered layer L left out (it is a fixed cost, not per P).
    Adam: 16 without sharding, 8 + 8/N at stage 1, 4 + 12/N at stage 2, 16/N at stage 3;
    in mixed precision ("fp16", "bf16": ZeRO's 2 + 2 + 12) 16, 4 + 12/N, 2 + 14/N, 16/N."""
    w, g, o = _state_bytes(optimizer, precision)
    stage, n = check_sharding(sharding), check_n_devices(n_devices)
    share = lambda sharded: 1 / n if sharded else 1  # noqa: E731
    return w * share(stage >= 3) + g * share(stage >= 2) + o * share(stage >= 1)


def predicted_device_memory(model, n_devices, optimizer, sharding):
    """What :meth:`engine.device_memory` should count, predicted: one dict per device,
    ``{"parameters": bytes, "gradients": bytes, "optimizer": bytes}``.

    ``optimizer``: a name or an optimizer object (its ``.name``). Sharding 0 means the
    update runs on every device with a full copy of the state (``strategy="ring"``);
    sharding 1 is ``strategy="sharded"``; 2 and 3 are predicted only (module docstring).
    """
    return model_state(model, optimizer, sharding, n_devices)


# -- the whole estimate ----------------------------------------------------------------
_CACHE = weakref.WeakKeyDictionary()  # model -> {(batch, float bytes): what grows with it}
_EXACT_LINE = weakref.WeakKeyDictionary()  # model -> {float bytes: n}: affine on [1, n]
STEP_TERMS = ("inputs", "activations", "transient", "workspace")


def _replayed(model, batch_size, float_bytes):
    """The split's terms at ``batch_size`` with floats of ``float_bytes``, from one graph
    replay; "recomputed" is the activations term with recomputation."""
    sim = simulate(model, batch_size, float_bytes)
    return {"inputs": batch_size * (float_bytes * int(np.prod(model.input_shape)) + 4),
            "activations": sim.activations, "recomputed": sim.recomputed,
            "transient": max(0, sim.peak_without_gradients - sim.activations),
            "workspace": sim.workspace}


def _step_terms(model, batch_size, precision="fp32", recompute=False):
    """inputs, activations, transient and workspace at ``batch_size``: one graph replay,
    or the line through 1 and 2 samples where :func:`split_limits` proved it exact.
    With ``recompute`` the activations are those :func:`recomputed_activations` keeps."""
    fb = value_bytes(check_precision(precision))
    cache = _CACHE.setdefault(model, {})
    n = int(batch_size)
    if (n, fb) in cache:
        terms = cache[n, fb]
    elif 2 < n <= _EXACT_LINE.get(model, {}).get(fb, 0):
        e1, e2 = cache[1, fb], cache[2, fb]
        terms = {k: e1[k] + (n - 1) * (e2[k] - e1[k]) for k in e1}
    else:
        terms = cache[n, fb] = _replayed(model, n, fb)
    out = {k: terms[k] for k in STEP_TERMS}
    if recompute:
        out["activations"] = terms["recomputed"]
    return out


def split_limits(model, budgets, precision="fp32", recompute=False):
    """For each budget (bytes left after the model state), the largest split n whose
    inputs + activations + transient + workspace fit in it (0 if not even one does), at
    ``precision`` and with or without ``recompute``.

    Three graph replays instead of dozens: these bytes are sums of buffers that grow
    linearly with n, or the largest such sum, so they are convex in n. If the replay at
    ``top`` (one past every answer read off the line through n = 1 and 2) lies on that
    line, every n in [1, top] does (a convex function that meets a line at 1, 2 and top
    lies on it in between), and each answer is read off the line; if not, each is searched.
    The line is taken as proven for a precision only where the totals with and without
    recomputation both lie on theirs, since both are read off the same replays.
    """
    totals = {rc: (lambda n, rc=rc: sum(_step_terms(model, n, precision, rc).values()))
              for rc in (False, True)}
    total = totals[bool(recompute)]
    t1, t2 = total(1), total(2)
    per = max(1, t2 - t1)
    fit = [0 if b < t1 else 1 + (b - t1) // per for b in budgets]
    top = max(fit, default=0) + 1
    on_line = lambda f: f(top) == f(1) + (top - 1) * (f(2) - f(1))  # noqa: E731
    if top > 2 and on_line(total):
        if on_line(totals[not recompute]):
            lines = _EXACT_LINE.setdefault(model, {})
            fb = value_bytes(precision)
            lines[fb] = max(top, lines.get(fb, 0))
        return fit
    return [_largest_fitting(total, b) for b in budgets]


def estimate(model, batch_size, optimizer="sgd", sharding=0, n_devices=1, precision="fp32",
             recompute=False):
    """Bytes one device needs for a training step on ``batch_size`` samples (its split).

    Returns ``{term: bytes}`` for every name in :data:`TERMS`, plus ``"total"`` (their
    sum). See the module docstring for what each term counts. ``sharding`` (ZeRO stage
    0-3) over ``n_devices`` devices shrinks the model state; the device returned is the
    one with the largest shard (the first such), the one that limits the batch.
    ``precision``: "fp32", "tf32" (both 4-byte), "fp16" or "bf16" (mixed precision);
    ``recompute``: keep only checkpoints of the activations (Chen et al. 2016).
    """
    states = model_state(model, optimizer, sharding, n_devices, precision)
    state = max(states, key=lambda d: sum(d.values()))
    est = {**state, **_step_terms(model, int(batch_size), precision, recompute)}
    est = {t: int(est[t]) for t in TERMS}
    est["total"] = sum(est.values())
    return est


def max_batch_size(model, memory_bytes, n_devices=1, optimizer="sgd", sharding=0,
                   precision="fp32", recompute=False):
    """The largest global batch whose split fits on each of ``n_devices`` devices of
    ``memory_bytes``: ``n_devices * m`` where ``m`` is the largest per-device split with
    ``estimate(model, m, optimizer, sharding, n_devices, precision, recompute)["total"]
    <= memory_bytes`` (0 if not even one sample fits). Without sharding m does not depend
    on N; with it, it grows with N, because each device keeps a smaller shard."""
    n = check_n_devices(n_devices)
    state = max(sum(d.values()) for d in model_state(model, optimizer, sharding, n, precision))
    return n * split_limits(model, [int(memory_bytes) - state], precision, recompute)[0]


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
                     reserved_bytes=DEFAULT_RESERVED, progress=True, sharding=0,
                     precision="fp32", recompute=False):
    """Rows ``{model, gpu, memory_gib, n_gpus, per_gpu_batch, global_batch, update_rule,
    sharding, precision, recompute, reserved_bytes, <terms>}``: the largest batch per GPU
    kind for 1..N GPUs, predicted from the graph, at ``precision`` (default "fp32"), with
    or without activation ``recompute`` (see :func:`estimate`).

    ``nets``: {name: model}; ``gpus``: names from :mod:`mgpu_lab.predict.gpus` (default
    its ``BOOK_GPUS``); ``optimizer``: its state is kept on the GPUs (default momentum,
    the book's); ``sharding``: the ZeRO stage 0-3 (default 0, every GPU holds all its
    state; see :data:`SHARDING_STAGES`); ``reserved_bytes``: memory per GPU not available
    to the step (CUDA context, framework; default
    :data:`~mgpu_lab.predict.gpus.DEFAULT_RESERVED`, an assumption). The terms are bytes on
    the busiest GPU at the per-GPU batch.
    """
    stage, precision = check_sharding(sharding), check_precision(precision)
    _check_optimizer(optimizer)
    kinds = [get_gpu(g) for g in (BOOK_GPUS if gpus is None else gpus)]
    counts = [check_n_devices(n) for n in n_gpus]
    how = (precision, bool(recompute))
    rows = []
    for name, model in tqdm(nets.items(), desc="limits", disable=not progress):
        state = {n: max(sum(d.values())
                        for d in model_state(model, optimizer, stage, n, precision))
                 for n in counts}
        cases = [(g, n) for g in kinds for n in counts]
        budgets = [g.memory_bytes - reserved_bytes - state[n] for g, n in cases]
        for (gpu, n), per in zip(cases, split_limits(model, budgets, *how)):
            rows.append({"model": name, "gpu": gpu.name, "memory_gib": gpu.memory_gib,
                         "n_gpus": n, "per_gpu_batch": per, "global_batch": n * per,
                         "update_rule": optimizer, "sharding": stage,
                         "precision": precision, "recompute": bool(recompute),
                         "reserved_bytes": int(reserved_bytes),
                         **estimate(model, max(per, 1), optimizer, stage, n, *how)})
    return rows
