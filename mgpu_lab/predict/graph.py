"""The training step as data: every node of the gradient graph, its shapes and its FLOPs.

A :class:`~mgpu_lab.models.Model` carries the symbolic loss; ``T.grad`` of it w.r.t. the
parameters is the graph each device runs in one step. We never compile it: we walk it in
the order Theano's VM runs it and ask each op for the shapes of its outputs
(``op.infer_shape``) given the concrete shapes of its inputs, for a chosen batch size. When an op answers with a
small symbolic expression (a pool's output size, the target shape of a reshape), a tiny
evaluator computes it from constants and the shapes found so far. A 152-layer ResNet at
224 px takes about a second (``T.grad`` included), where compiling it takes minutes.

Each node is tagged *forward* (an ancestor of the loss) or *backward* (only in the
gradient), which is what :mod:`mgpu_lab.predict.memory` and :func:`count_flops` need.

For the cost model's roofline, :func:`kernels` groups the nodes as a GPU runs them: one
kernel per convolution (forward, gradient w.r.t. inputs, gradient w.r.t. weights), matrix
product, reduction or pool, and one per chain of elementwise ops fused together (Theano's
compiler fuses an elementwise op into the one that reads its result when nothing else
does, as GPU frameworks fuse bias, activation and their gradients). A kernel reads its
float inputs (activations, weights, gradients) once and writes its float outputs once:
:attr:`Kernel.elements` numbers of ``float_bytes`` each (4 in float32, 2 in 16-bit).
Views and shape arithmetic move nothing.
"""
import sys
import weakref
from dataclasses import dataclass

import numpy as np

from .._theano import T, theano
from theano.graph.basic import Constant, NoParams, ancestors, graph_inputs  # noqa: E402
from theano.compile.sharedvalue import SharedVariable  # noqa: E402

__all__ = ["NodeInfo", "GraphInfo", "Kernel", "training_graph", "vm_order", "analyse",
           "count_flops", "kernels", "count_bytes", "is_fast_conv", "NO_FLOP_OPS",
           "FLOPS_PER_ELEMENT"]

# Ops that only move or reinterpret data: no arithmetic. (Which of them are also free in
# memory, being views in the compiled graph, is mgpu_lab.predict.memory's VIEW_OPS.)
NO_FLOP_OPS = {"DimShuffle", "Reshape", "Subtensor", "Shape", "Shape_i", "MakeVector",
            "Alloc", "SpecifyShape", "Rebroadcast", "ViewOp", "OutputGuard", "Flatten"}

# Arithmetic per output element of ops that are not a plain elementwise op (which count 1).
# Softmax: max, subtract, exp, sum, divide; its gradient: multiply, sum, subtract, multiply.
FLOPS_PER_ELEMENT = {"Softmax": 5, "SoftmaxGrad": 4, "SoftmaxWithBias": 6}


@dataclass
class NodeInfo:
    """One op of the training step, for one batch size."""

    node: object  # the theano Apply node
    op: str  # op class name, e.g. "AbstractConv2d"
    phase: str  # "forward" (computes the loss) or "backward" (only in the gradients)
    in_shapes: list  # tuple of ints per input
    out_shapes: list  # tuple of ints per output
    flops: int  # floating-point operations of this node


@dataclass
class GraphInfo:
    """The whole step: nodes in execution order plus the shape of every variable."""

    model: object
    batch_size: int
    nodes: list  # NodeInfo, in execution order
    shapes: dict  # theano Variable -> tuple of ints
    outputs: list  # [loss, grad_1, ..., grad_k]
    forward_nodes: set  # Apply nodes the loss needs

    def nbytes(self, var):
        """Bytes of a variable's value at this batch size."""
        return int(np.prod(self.shapes[var], dtype=np.int64)) * np.dtype(var.dtype).itemsize


# -- the symbolic graph (built once per model) ------------------------------------------
_GRAPHS = weakref.WeakKeyDictionary()


def training_graph(model):
    """``(outputs, nodes, forward)`` of one step: ``[loss] + grads``, their Apply nodes in
    execution order (:func:`vm_order`), and the set of forward nodes. Cached per model
    (``T.grad`` of a 150-layer net takes a moment)."""
    if model not in _GRAPHS:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 50_000))  # T.grad recurses once per layer or so
        try:
            outputs = [model.loss] + list(T.grad(model.loss, model.params))
        finally:
            sys.setrecursionlimit(limit)
        nodes = vm_order(outputs)
        forward = {v.owner for v in ancestors([model.loss]) if v.owner is not None}
        _GRAPHS[model] = (outputs, nodes, forward)
    return _GRAPHS[model]


def vm_order(outputs):
    """Apply nodes in the order Theano's stack VM runs them: demand-driven from the last
    output back (a node runs once all its inputs exist). The order decides how long each
    result stays alive, hence the memory peak."""
    done, order = set(), []
    stack = [v.owner for v in outputs if v.owner is not None]
    while stack:
        node = stack.pop()
        if node in done:
            continue
        missing = [v.owner for v in node.inputs if v.owner is not None and v.owner not in done]
        if missing:
            stack.append(node)
            stack.extend(missing)
        else:
            done.add(node)
            order.append(node)
    return order


# -- a tiny evaluator for the scalar shape expressions ops return ----------------------
class _Evaluator:
    """Values of small symbolic expressions, with ``Shape``/``Shape_i`` answered from the
    shapes already inferred (so no tensor data is ever needed)."""

    def __init__(self, shapes):
        self.shapes, self.values = shapes, {}

    def shape(self, var):
        if var not in self.shapes:  # an expression made up by infer_shape: infer it too
            self.shapes[var] = self._infer(var)
        return self.shapes[var]

    def _infer(self, var):
        if isinstance(var, Constant):
            return np.shape(var.data)
        node = var.owner
        in_shapes = [_int64(self.shape(v)) for v in node.inputs]
        out = node.op.infer_shape(None, node, in_shapes)[node.outputs.index(var)]
        return tuple(self.as_int(d) for d in out)

    def as_int(self, d):
        return int(self.value(d)) if hasattr(d, "owner") else int(d)

    def value(self, var):
        if var in self.values:
            return self.values[var]
        if isinstance(var, Constant):
            return var.data
        if isinstance(var, SharedVariable):
            return var.get_value(borrow=True)
        node = var.owner
        if node is None:
            raise ValueError(f"a shape depends on the value of input {var}; cannot infer it")
        name = type(node.op).__name__
        if name == "Shape":
            result = [np.asarray(self.shape(node.inputs[0]), dtype="int64")]
        elif name == "Shape_i":
            result = [np.asarray(self.shape(node.inputs[0])[node.op.i], dtype="int64")]
        else:
            inputs = [self.value(v) for v in node.inputs]
            storage = [[None] for _ in node.outputs]
            params = node.run_params()
            if params is NoParams:
                node.op.perform(node, inputs, storage)
            else:
                node.op.perform(node, inputs, storage, params)
            result = [s[0] for s in storage]
        for out, val in zip(node.outputs, result):
            self.values[out] = val
        return self.values[var]


def _int64(shape):
    """Shape entries as numpy int64: a plain Python int would become an int8 Theano
    constant inside an op's shape formula, and 16*8*8*8 overflows int8."""
    return tuple(np.int64(d) for d in shape)


def _input_shape(var, model, batch_size):
    if var is model.x:
        return (batch_size,) + tuple(model.input_shape)
    if var is model.y:
        return (batch_size,)
    if isinstance(var, SharedVariable):
        return var.get_value(borrow=True).shape
    if isinstance(var, Constant):
        return np.shape(var.data)
    raise ValueError(f"the loss depends on an input other than x and y: {var}")


def analyse(model, batch_size):
    """:class:`GraphInfo` of one training step at ``batch_size`` (shapes + FLOPs per node)."""
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outputs, nodes, forward = training_graph(model)
    shapes = {v: tuple(_input_shape(v, model, batch_size)) for v in graph_inputs(outputs)}
    ev = _Evaluator(shapes)
    infos = []
    with theano.config.change_flags(traceback__limit=0):  # no stack trace per new variable
        for node in nodes:
            in_shapes = [ev.shape(v) for v in node.inputs]
            for var, shp in zip(node.outputs, _out_shapes(node, in_shapes, ev)):
                shapes[var] = shp
            infos.append(_node_info(node, forward, in_shapes, [shapes[v] for v in node.outputs], ev))
    return GraphInfo(model, batch_size, infos, shapes, outputs, forward)


def _out_shapes(node, in_shapes, ev):
    """Output shapes of ``node`` as tuples of ints."""
    if type(node.op).__name__ == "Subtensor":
        # Slicing a free stand-in of the input's shape (all strides 0, no memory) is
        # exact and much faster than Subtensor's symbolic shape formula.
        x = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=node.inputs[0].dtype),
                                            shape=in_shapes[0], strides=(0,) * len(in_shapes[0]))
        storage = [[None]]
        node.op.perform(node, [x] + [ev.value(v) for v in node.inputs[1:]], storage)
        return [np.shape(storage[0][0])]
    outs = node.op.infer_shape(None, node, [_int64(s) for s in in_shapes])
    return [tuple(ev.as_int(d) for d in shp) for shp in outs]


def _node_info(node, forward, in_shapes, out_shapes, ev):
    info = NodeInfo(node, type(node.op).__name__,
                    "forward" if node in forward else "backward", in_shapes, out_shapes, 0)
    info.flops = node_flops(info, ev)
    return info


# -- FLOPs -------------------------------------------------------------------------------
def _size(shape):
    return int(np.prod(shape, dtype=np.int64))


def node_flops(info, ev=None):
    """Floating-point operations of one node (multiply and add count as two).

    conv (and both its gradients): 2*N*Cout*Hout*Wout*Cin*kh*kw; dot: 2*m*k*n;
    elementwise: 1 per output element; reductions: 1 per input element; max-pool: one
    comparison per window element; data movement and shape arithmetic: 0.
    """
    op, ins, outs = info.op, info.in_shapes, info.out_shapes
    if op == "AbstractConv2d":  # inputs: image (N,Cin,H,W), kernel (Cout,Cin,kh,kw)
        cout, cin, kh, kw = ins[1]
        return 2 * _size(outs[0]) * cin * kh * kw
    if op == "AbstractConv2d_gradWeights":  # image, topgrad (N,Cout,Ho,Wo) -> kernel
        _, cin, kh, kw = outs[0]
        return 2 * _size(ins[1]) * cin * kh * kw
    if op == "AbstractConv2d_gradInputs":  # kernel (Cout,Cin,kh,kw), topgrad -> image
        _, cin, kh, kw = ins[0]
        return 2 * _size(ins[1]) * cin * kh * kw
    if op in ("Dot", "Dot22", "Gemm", "Gemv", "Dot22Scalar"):
        k = ins[0][-1] if ins[0] else 1
        return 2 * _size(outs[0]) * k
    if op == "Pool":
        ws = ev.value(info.node.inputs[1]) if ev else (2, 2)
        return _size(outs[0]) * _size(ws)
    if op in ("MaxPoolGrad", "AveragePoolGrad"):
        return 2 * _size(ins[0])  # compare each input with its window's max, add the grad
    if op in ("Sum", "CAReduce", "Prod", "MaxAndArgmax", "Max", "Min", "Argmax"):
        return _size(ins[0])
    if op in NO_FLOP_OPS or not info.node.outputs[0].dtype.startswith("float"):
        return 0  # data movement, or integer shape arithmetic
    return FLOPS_PER_ELEMENT.get(op, 1) * sum(_size(s) for s in outs)


def _tabulate(model, batch_size):
    """One graph walk at ``batch_size`` fills both per-model caches: the FLOPs by phase
    (:func:`count_flops`) and the kernels (:func:`kernels`)."""
    info = analyse(model, batch_size)
    fwd = sum(n.flops for n in info.nodes if n.phase == "forward")
    bwd = sum(n.flops for n in info.nodes if n.phase == "backward")
    model.__dict__.setdefault("_flops_by_batch", {})[batch_size] = {
        "forward": int(fwd), "backward": int(bwd), "total": int(fwd + bwd)}
    groups, clients, outputs = _fused_groups(info)
    ks = (_kernel(g, info, clients, outputs) for g in groups)
    model.__dict__.setdefault("_kernels_by_batch", {})[batch_size] = [
        k for k in ks if k.flops or k.elements]  # a cast of an integer scalar: nothing


def count_flops(model, batch_size):
    """FLOPs of one training step (loss and all gradients) for one batch of ``batch_size``.

    Counted node by node on the uncompiled gradient graph: ``"forward"`` is every op the
    loss needs, ``"backward"`` every op only the gradients need. Compiling fuses and
    removes some elementwise ops, so elementwise terms are an upper bound; convolutions
    and matrix products (nearly all of the total for a real net) are exact.
    """
    cache = model.__dict__.setdefault("_flops_by_batch", {})  # a graph walk costs seconds
    if batch_size not in cache:
        _tabulate(model, batch_size)
    return dict(cache[batch_size])


# -- kernels: what the roofline charges ------------------------------------------------
@dataclass(frozen=True)
class Kernel:
    """One kernel of the training step (one op, or a chain of fused elementwise ops)."""

    ops: tuple  # op names in execution order, e.g. ("AbstractConv2d",) or ("Elemwise", ...)
    phase: str  # "forward" or "backward"
    flops: int  # as counted by :func:`node_flops`
    elements: int  # float numbers read (distinct inputs) plus written (outputs used later)
    fast_conv_flops: int  # of ``flops``, those in 3x3 stride-1 convolutions (Winograd)
    label: str  # e.g. "conv 3x3 64->64 56x56 forward", "elementwise (3 ops)"

    def nbytes(self, float_bytes=4):
        """Bytes moved to and from GPU memory with ``float_bytes`` per number."""
        return self.elements * int(float_bytes)

    def intensity(self, float_bytes=4):
        """Arithmetic intensity: FLOPs per byte moved (0 for a kernel that moves nothing)."""
        return self.flops / self.nbytes(float_bytes) if self.elements else 0.0


def is_fast_conv(info):
    """True for a 3x3 stride-1 convolution node, whichever direction it computes: the
    ones Winograd's algorithms do with fewer multiplications (chapter 11)."""
    if not info.op.startswith("AbstractConv2d"):
        return False
    kernel = {"AbstractConv2d": lambda: info.in_shapes[1],
              "AbstractConv2d_gradWeights": lambda: info.out_shapes[0],
              "AbstractConv2d_gradInputs": lambda: info.in_shapes[0]}[info.op]()
    return tuple(info.node.op.subsample) == (1, 1) and tuple(kernel[-2:]) == (3, 3)


def _fused_groups(info):
    """Lists of NodeInfo, one per kernel, in execution order: an Elemwise node joins the
    Elemwise node that reads its output when that is the output's only reader (and it is
    not a result of the step); views and shape arithmetic form no kernel."""
    clients = {}
    for n in info.nodes:
        for v in set(n.node.inputs):
            clients.setdefault(v, []).append(n.node)
    by_node = {n.node: n for n in info.nodes}
    root = {n.node: n.node for n in info.nodes}

    def find(a):
        while root[a] is not a:
            root[a] = root[root[a]]  # path halving
            a = root[a]
        return a
    outputs = set(info.outputs)
    for n in info.nodes:
        if n.op != "Elemwise":
            continue
        for v in n.node.inputs:
            p = by_node.get(v.owner)
            if p is not None and p.op == "Elemwise" and clients[v] == [n.node] \
                    and v not in outputs:
                root[find(p.node)] = find(n.node)
    groups = {}
    for n in info.nodes:
        if n.op not in NO_FLOP_OPS:
            groups.setdefault(find(n.node), []).append(n)
    return list(groups.values()), clients, outputs


def _is_float(var):
    return var.dtype.startswith("float")


def _kernel(group, info, clients, outputs):
    members = {n.node for n in group}
    read = {v for n in group for v in n.node.inputs if _is_float(v) and v.owner not in members}
    written = {v for n in group for v in n.node.outputs if _is_float(v) and (
        v in outputs or any(c not in members for c in clients.get(v, [])))}
    elements = sum(int(np.prod(info.shapes[v], dtype=np.int64)) for v in read | written)
    ops = tuple(n.op for n in group)
    return Kernel(ops, group[0].phase, int(sum(n.flops for n in group)), int(elements),
                  int(sum(n.flops for n in group if is_fast_conv(n))), _label(group))


def _label(group):
    """A short description of a kernel for tables and figures."""
    n = group[0]
    if n.op == "Elemwise":
        return f"elementwise ({len(group)} op{'s' if len(group) > 1 else ''}), {n.phase}"
    if not n.op.startswith("AbstractConv2d"):
        return f"{n.op}, {n.phase}"
    cout, cin, kh, kw = {"AbstractConv2d": n.in_shapes[1],
                         "AbstractConv2d_gradWeights": n.out_shapes[0],
                         "AbstractConv2d_gradInputs": n.in_shapes[0]}[n.op]
    # the layer's output (N, Cout, Ho, Wo): the forward result, or the gradient read
    side = (n.out_shapes[0] if n.op == "AbstractConv2d" else n.in_shapes[1])[-1]
    what = {"AbstractConv2d": "forward", "AbstractConv2d_gradWeights": "grad weights",
            "AbstractConv2d_gradInputs": "grad inputs"}[n.op]
    return f"conv {kh}x{kw} {cin}->{cout} out {side}x{side}, {what}"


def kernels(model, batch_size):
    """The step's :class:`Kernel` list at ``batch_size``, in execution order (cached per
    batch size on the model, as :func:`count_flops`)."""
    cache = model.__dict__.setdefault("_kernels_by_batch", {})
    if batch_size not in cache:
        _tabulate(model, batch_size)
    return list(cache[batch_size])


def count_bytes(model, batch_size, float_bytes=4):
    """Bytes one training step moves to and from GPU memory, kernel by kernel, at
    ``float_bytes`` per number: ``{"forward", "backward", "total"}`` as :func:`count_flops`."""
    if float_bytes not in (2, 4):
        raise ValueError(f"float_bytes must be 4 (float32) or 2 (16-bit), got {float_bytes!r}")
    ks = kernels(model, batch_size)
    fwd = sum(k.nbytes(float_bytes) for k in ks if k.phase == "forward")
    bwd = sum(k.nbytes(float_bytes) for k in ks if k.phase == "backward")
    return {"forward": int(fwd), "backward": int(bwd), "total": int(fwd + bwd)}
