"""The book's named networks, in one place: the CLI, the benchmarks and the chapters
import them from here.

    digits_model(name)          the 8x8 digits nets the chapters train
    imagenet_model(name, ...)   ImageNet-shaped nets (3 channels, 1000 classes) for predictions
    imagenet_nets()             the three the book compares: VGG-16-, ResNet-50-, ResNet-152-like
    BENCH_MODELS, bench_model   the benchmark's compute-bound CNN and communication-bound MLP
    sized_mlp(nbytes)           an MLP whose gradient is about ``nbytes`` bytes
"""
import numpy as np

from . import models
from ._theano import floatX

__all__ = ["DIGITS_MODELS", "digits_model", "IMAGENET_MODELS", "imagenet_model", "imagenet_nets",
           "BENCH_MODELS", "bench_model", "sized_mlp", "SOAK_MODEL"]

DIGITS_MODELS = ("cnn", "mlp", "logistic")
IMAGENET_MODELS = ("resnet", "vgg16", "cnn", "mlp")


def digits_model(name, seed=0):
    """The book's models for the 8x8 digits: 'cnn' (5,794 params), 'mlp' or 'logistic'."""
    if name == "cnn":
        return models.cnn(image_size=8, channels=1, width=8, depth=2, seed=seed)
    if name == "mlp":
        return models.mlp(n_in=64, hidden=(64,), seed=seed)
    if name == "logistic":
        return models.logistic(n_in=64, seed=seed)
    raise ValueError(f"unknown digits model {name!r}; choose one of {', '.join(DIGITS_MODELS)}")


def imagenet_model(name, image_size=224, depth=None, width=None):
    """An ImageNet-shaped net (3 channels, 1000 classes): 'resnet' (bottleneck, depth 50 by
    default), 'vgg16', 'cnn' (3x3 conv stages, average-pool head, depth 16) or 'mlp'."""
    if name == "vgg16":
        return models.vgg16_like(image_size=image_size, width=width or 64)
    if name == "resnet":
        return models.resnet_like(depth or 50, image_size=image_size, width=width or 64)
    if name == "mlp":
        return models.mlp(n_in=3 * image_size ** 2, hidden=(width or 4096,) * (depth or 2),
                          n_classes=1000)
    if name == "cnn":
        return models.cnn(image_size=image_size, channels=3, n_classes=1000, width=width or 64,
                          depth=depth or 16, head="avg")
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(IMAGENET_MODELS)}")


def imagenet_nets(image_size=224):
    """The book's ImageNet-sized nets (built once per call; VGG-16 takes a few seconds)."""
    return {"VGG-16-like": models.vgg16_like(image_size=image_size),
            "ResNet-50-like": models.resnet_like(50, image_size=image_size),
            "ResNet-152-like": models.resnet_like(152, image_size=image_size)}


# The benchmark's models. The CNN (32 px RGB, 4 conv layers of width 16, 101,482 params,
# ~30.5 MFLOP per image and step) keeps a CPU core busy ~1 ms per image while its gradient
# is only 0.4 MB: compute-bound, like a real conv net on a GPU. The MLP is the opposite
# (0.8 M params, cheap per image): it shows what communication costs.
BENCH_MODELS = {
    "cnn": models.ModelSpec.of("cnn", image_size=32, channels=3, n_classes=10, width=16, depth=4,
                               residual=False, head="flatten", fc=(), seed=0),
    "mlp": models.ModelSpec.of("mlp", n_in=3 * 32 * 32, hidden=(256,), n_classes=10, seed=0),
}

# The load test's model: the digits MLP (64-64-10), cheap enough for thousands of steps.
SOAK_MODEL = models.ModelSpec.of("mlp", n_in=64, hidden=(64,), n_classes=10, seed=0)


def bench_model(name):
    """The benchmark's model called ``name`` ('cnn' or 'mlp')."""
    if name not in BENCH_MODELS:
        raise ValueError(f"unknown benchmark model {name!r}; choose one of {', '.join(BENCH_MODELS)}")
    return models.build(BENCH_MODELS[name])


def sized_mlp(nbytes, n_in=64, seed=0):
    """An MLP (n_in -> h -> h -> 10) whose gradient is about ``nbytes`` bytes of floatX."""
    params = max(1, int(nbytes) // np.dtype(floatX).itemsize)
    # h^2 + (n_in + 12) h + 10 = params  (two hidden layers of width h, their biases, the head)
    b = n_in + 12
    h = max(1, int(round((-b + np.sqrt(b * b + 4 * (params - 10))) / 2)))
    return models.mlp(n_in=n_in, hidden=(h, h), seed=seed)
