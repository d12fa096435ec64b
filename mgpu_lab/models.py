"""Theano networks for the book: logistic regression, an MLP and a scalable CNN.

A :class:`Model` owns its parameters as Theano shared variables, the symbolic mean
cross-entropy loss, and (compiled lazily, once) a function that returns the loss and
the gradient of every parameter. Every builder records a picklable :class:`ModelSpec`
(name + keyword arguments) so a worker process can rebuild the very same graph and
initial parameters from the same seed.
"""
import textwrap
from dataclasses import dataclass

import numpy as np

from ._theano import T, floatX, theano
from theano.tensor.signal.pool import pool_2d  # noqa: E402  (theano comes from _theano)
from .validate import check_batch

__all__ = ["Model", "ModelSpec", "build", "logistic", "mlp", "cnn", "vgg16_like", "resnet_like",
           "RESNET_BLOCKS", "BUILDERS"]


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model anywhere: a builder name and its kwargs."""

    name: str
    kwargs: tuple = ()  # sorted (key, value) pairs, so the spec is hashable

    @classmethod
    def of(cls, name, **kwargs):
        return cls(name, tuple(sorted(kwargs.items())))

    def describe(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs)
        return f"{self.name}({args})"


def fold(text, width=88):
    """``text`` folded at spaces to the book's page width (88 characters, as
    mgpu_lab.figures.tables.WIDTH), continuation lines indented: for reprs a chapter prints."""
    return textwrap.fill(text, width, subsequent_indent="    ", break_long_words=False,
                         break_on_hyphens=False)


class Model:
    """A network: shared params, symbolic inputs ``x``/``y``, symbolic mean ``loss``."""

    def __init__(self, spec, x, y, params, probs, input_shape, n_classes):
        self.spec = spec
        self.x, self.y = x, y  # x: (batch, *input_shape) floatX; y: (batch,) int32
        self.params = params  # list of theano shared variables
        self.probs = probs  # (batch, n_classes) softmax outputs
        self.loss = T.nnet.categorical_crossentropy(probs, y).mean()
        self.input_shape = tuple(input_shape)
        self.n_classes = n_classes
        self._grad_fn = None
        self._eval_fn = None

    # -- parameters ------------------------------------------------------------
    @property
    def param_shapes(self):
        return [p.get_value(borrow=True).shape for p in self.params]

    @property
    def n_params(self):
        return int(sum(np.prod(s) for s in self.param_shapes))

    def get_values(self):
        """Copies of the parameter arrays, in ``params`` order."""
        return [p.get_value() for p in self.params]

    def set_values(self, values):
        """Set every parameter at once; checks all shapes first, so a bad list changes nothing."""
        values = list(values)
        if len(values) != len(self.params):
            raise ValueError(
                f"set_values got {len(values)} arrays but {self.spec.describe()} has "
                f"{len(self.params)} parameters ({', '.join(p.name for p in self.params)})"
            )
        arrays = []
        for p, v in zip(self.params, values):
            v = np.asarray(v)
            want = p.get_value(borrow=True).shape
            if v.shape != want:
                raise ValueError(f"parameter {p.name} needs shape {want}, got {v.shape}")
            arrays.append(np.ascontiguousarray(v, dtype=floatX))
        for p, v in zip(self.params, arrays):
            p.set_value(v)

    # -- compiled functions ----------------------------------------------------
    def loss_and_gradients_function(self):
        """Compiled ``f(x, y) -> [loss, g_1, ..., g_k]`` (one graph, compiled once)."""
        if self._grad_fn is None:
            grads = T.grad(self.loss, self.params)
            self._grad_fn = theano.function([self.x, self.y], [self.loss] + grads,
                                            name=f"grad:{self.spec.name}")
        return self._grad_fn

    def gradient_function(self):
        """Compiled ``f(x, y) -> list`` of gradient arrays shaped like ``params``."""
        f = self.loss_and_gradients_function()
        return lambda x, y: f(x, y)[1:]

    def loss_and_accuracy_function(self):
        """Compiled ``f(x, y) -> (mean loss, accuracy)``."""
        if self._eval_fn is None:
            acc = T.mean(T.eq(T.argmax(self.probs, axis=1), self.y))
            self._eval_fn = theano.function([self.x, self.y], [self.loss, acc],
                                            name=f"eval:{self.spec.name}")
        return self._eval_fn

    def check_batch(self, x, y):
        """Validated ``(x, y)`` as (floatX, int32) arrays; clear errors otherwise."""
        return check_batch(x, y, self.input_shape, self.n_classes)

    def __repr__(self):
        return fold(f"<Model {self.spec.describe()}: {self.n_params:,} parameters>")


# -- layers (each returns its output and appends its parameters) ------------------
def _shared(rng, shape, fan_in, name):
    """He-normal weights: keeps ReLU activations at unit scale through deep stacks."""
    w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(floatX)
    return theano.shared(w, name=name)


def _zeros(shape, name):
    return theano.shared(np.zeros(shape, dtype=floatX), name=name)


def _dense(h, n_in, n_out, rng, params, name):
    W, b = _shared(rng, (n_in, n_out), n_in, f"{name}.W"), _zeros((n_out,), f"{name}.b")
    params += [W, b]
    return T.dot(h, W) + b  # (batch, n_out)


def _conv(h, c_in, c_out, rng, params, name):
    """3x3 'same' convolution + bias: (batch, c_in, H, W) -> (batch, c_out, H, W)."""
    W = _shared(rng, (c_out, c_in, 3, 3), c_in * 9, f"{name}.W")
    b = _zeros((c_out,), f"{name}.b")
    params += [W, b]
    out = T.nnet.conv2d(h, W, border_mode="half", filter_flip=False)
    return out + b.dimshuffle("x", 0, "x", "x")


# -- builders ----------------------------------------------------------------------
def logistic(n_in=64, n_classes=10, seed=0):
    """Softmax regression on flat inputs (batch, n_in)."""
    spec = ModelSpec.of("logistic", n_in=n_in, n_classes=n_classes, seed=seed)
    rng, params = np.random.RandomState(seed), []
    x, y = T.matrix("x", dtype=floatX), T.ivector("y")
    probs = T.nnet.softmax(_dense(x, n_in, n_classes, rng, params, "out"))
    return Model(spec, x, y, params, probs, (n_in,), n_classes)


def mlp(n_in=64, hidden=(64,), n_classes=10, seed=0):
    """ReLU multi-layer perceptron on flat inputs (batch, n_in)."""
    hidden = tuple(int(h) for h in hidden)
    spec = ModelSpec.of("mlp", n_in=n_in, hidden=hidden, n_classes=n_classes, seed=seed)
    rng, params = np.random.RandomState(seed), []
    x, y = T.matrix("x", dtype=floatX), T.ivector("y")
    h, width = x, n_in
    for i, n_out in enumerate(hidden):
        h, width = T.nnet.relu(_dense(h, width, n_out, rng, params, f"fc{i + 1}")), n_out
    probs = T.nnet.softmax(_dense(h, width, n_classes, rng, params, "out"))
    return Model(spec, x, y, params, probs, (n_in,), n_classes)


def _stage_plan(image_size, depth, max_stages=5):
    """Conv layers per stage; every stage but the last ends in a 2x2 max-pool.

    Stages halve the image until about 7 px remain (224 -> 7 in five stages, as in
    VGG/ResNet); the depth is spread evenly, later stages taking the remainder.
    """
    n_stages = 1
    while n_stages < max_stages and image_size // 2 ** n_stages >= 7:
        n_stages += 1
    n_stages = max(1, min(n_stages, depth))
    base, extra = divmod(depth, n_stages)
    return [base + (1 if i >= n_stages - extra else 0) for i in range(n_stages)]


def cnn(image_size=8, channels=1, n_classes=10, width=8, depth=2, residual=False,
        head="flatten", fc=(), seed=0, pool_last=False):
    """A VGG-style (or, with ``residual=True``, ResNet-style) CNN of any size and depth.

    ``depth`` 3x3 conv layers, grouped in stages that halve the image with a max-pool and
    double the width (up to 8x ``width``). With ``residual`` every conv after a stage's
    first adds its input (identity shortcut). The head either flattens the last feature
    map (``"flatten"``, as VGG does) or averages it over space (``"avg"``, as ResNet
    does), then applies the hidden dense layers ``fc`` (VGG-16: (4096, 4096)) and a
    softmax layer. ``pool_last`` also pools after the last stage (VGG: 224 -> 7 px).
    Input: (batch, channels, image_size, image_size).
    """
    if image_size < 1 or depth < 1 or width < 1:
        raise ValueError(f"cnn needs image_size, depth and width >= 1, got "
                         f"{image_size}, {depth}, {width}")
    if head not in ("flatten", "avg"):
        raise ValueError(f"head must be 'flatten' or 'avg', got {head!r}")
    fc = tuple(int(n) for n in fc)
    spec = ModelSpec.of("cnn", image_size=image_size, channels=channels, n_classes=n_classes,
                        width=width, depth=depth, residual=residual, head=head, fc=fc, seed=seed,
                        **({"pool_last": True} if pool_last else {}))  # old specs unchanged
    rng, params = np.random.RandomState(seed), []
    x, y = T.tensor4("x", dtype=floatX), T.ivector("y")
    h, c_in, layer, size = x, channels, 0, image_size
    plan = _stage_plan(image_size, depth)
    for s, n_layers in enumerate(plan):
        c_out = width * min(2 ** s, 8)
        for i in range(n_layers):
            layer += 1
            out = _conv(h, c_in, c_out, rng, params, f"conv{layer}")
            h = T.nnet.relu(out + h if residual and i > 0 else out)
            c_in = c_out
        if s < len(plan) - 1 or pool_last:
            h, size = pool_2d(h, (2, 2), ignore_border=True, mode="max"), size // 2
    if head == "avg":
        h, n = h.mean(axis=(2, 3)), c_in  # (batch, c_in)
    else:
        h, n = h.flatten(2), c_in * size * size  # (batch, c_in * size * size)
    for i, n_out in enumerate(fc):
        h, n = T.nnet.relu(_dense(h, n, n_out, rng, params, f"fc{i + 1}")), n_out
    probs = T.nnet.softmax(_dense(h, n, n_classes, rng, params, "out"))
    return Model(spec, x, y, params, probs, (channels, image_size, image_size), n_classes)


# -- presets for the memory chapter (224 px ImageNet-sized nets) -----------------------
def vgg16_like(image_size=224, channels=3, n_classes=1000, width=64, fc=(4096, 4096), seed=0):
    """VGG-16 (Simonyan & Zisserman, 2014) as a :func:`cnn`: 13 3x3 convs in stages of
    2, 2, 3, 3, 3 with widths 64..512, five max-pools, two 4096 dense layers. At 224 px
    it has VGG-16's 138,357,544 parameters. Small ``width``/``fc`` give test-sized nets."""
    return cnn(image_size=image_size, channels=channels, n_classes=n_classes, width=width,
               depth=13, head="flatten", fc=fc, seed=seed, pool_last=True)


# bottleneck blocks per stage of ResNet-D, D = 3 * blocks + 2 (He et al., 2015, table 1)
RESNET_BLOCKS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3),
                 200: (3, 24, 36, 3)}  # 200: He et al., 2016 (identity mappings)


def _conv_k(h, c_in, c_out, k, stride, rng, params, name):
    """k x k convolution with stride and 'same'-style padding k//2, plus bias."""
    W = _shared(rng, (c_out, c_in, k, k), c_in * k * k, f"{name}.W")
    b = _zeros((c_out,), f"{name}.b")
    params += [W, b]
    out = T.nnet.conv2d(h, W, border_mode=(k // 2, k // 2), subsample=(stride, stride),
                        filter_flip=False)
    return out + b.dimshuffle("x", 0, "x", "x")


def resnet_like(depth=50, image_size=224, channels=3, n_classes=1000, width=64, seed=0):
    """A ResNet with bottleneck blocks (He et al., 2015), without batch normalisation.

    Stem: 7x7 stride-2 conv + 3x3 stride-2 max-pool (224 -> 56 px); four stages of
    blocks 1x1 (w) -> 3x3 (w, stride 2 in a stage's first block but the first stage's)
    -> 1x1 (4w) plus a shortcut (1x1 projection where the shape changes); w doubles per
    stage from ``width``; global average pool; dense softmax layer. ``depth`` is one of
    :data:`RESNET_BLOCKS`. Parameters: ResNet-D's, with one bias per conv channel where
    ResNet has batch norm's two (50: 25.53 M vs 25.56 M). Not built on :func:`cnn`, which
    has neither bottlenecks nor strided convolutions.
    """
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"resnet_like depth must be one of {sorted(RESNET_BLOCKS)}, got {depth}")
    spec = ModelSpec.of("resnet_like", depth=depth, image_size=image_size, channels=channels,
                        n_classes=n_classes, width=width, seed=seed)
    rng, params = np.random.RandomState(seed), []
    x, y = T.tensor4("x", dtype=floatX), T.ivector("y")
    h = T.nnet.relu(_conv_k(x, channels, width, 7, 2, rng, params, "stem"))
    h = pool_2d(h, (3, 3), ignore_border=True, stride=(2, 2), pad=(1, 1), mode="max")
    c_in = width
    for s, n_blocks in enumerate(RESNET_BLOCKS[depth]):
        w = width * 2 ** s
        for i in range(n_blocks):
            stride, name = (2 if s > 0 and i == 0 else 1), f"s{s + 1}b{i + 1}"
            t = T.nnet.relu(_conv_k(h, c_in, w, 1, 1, rng, params, f"{name}.a"))
            t = T.nnet.relu(_conv_k(t, w, w, 3, stride, rng, params, f"{name}.b"))
            t = _conv_k(t, w, 4 * w, 1, 1, rng, params, f"{name}.c")
            short = h if i > 0 else _conv_k(h, c_in, 4 * w, 1, stride, rng, params, f"{name}.proj")
            h, c_in = T.nnet.relu(t + short), 4 * w
    h = h.mean(axis=(2, 3))  # (batch, 4 * 8 * width)
    probs = T.nnet.softmax(_dense(h, c_in, n_classes, rng, params, "out"))
    return Model(spec, x, y, params, probs, (channels, image_size, image_size), n_classes)


BUILDERS = {"logistic": logistic, "mlp": mlp, "cnn": cnn, "vgg16_like": vgg16_like,
            "resnet_like": resnet_like}


def build(spec):
    """Rebuild a model from its :class:`ModelSpec` (or return a Model unchanged)."""
    if isinstance(spec, Model):
        return spec
    if spec.name not in BUILDERS:
        raise ValueError(f"unknown model {spec.name!r}; known models: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[spec.name](**dict(spec.kwargs))
