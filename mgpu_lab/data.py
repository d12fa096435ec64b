"""The book's data: UCI handwritten digits (shipped in ``data/``) and synthetic images."""
import gzip
import math
from pathlib import Path

import numpy as np

from ._theano import floatX

__all__ = ["DATA_DIR", "load_digits", "synthetic_images", "random_batch", "train_test_split"]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def load_digits(flat=False, path=None):
    """1,797 8x8 digit images scaled to [0, 1] and their labels 0..9.

    Returns ``x`` of shape (1797, 1, 8, 8) -- or (1797, 64) with ``flat`` -- in floatX and
    ``y`` (1797,) int32. Source and licence: ``data/README.md``.
    """
    path = Path(path or DATA_DIR / "digits.csv.gz")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; it ships with the repository (data/README.md)")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = (table[:, :64] / 16.0).astype(floatX)  # pixel counts 0..16 -> [0, 1]
    y = table[:, 64].astype(np.int32)
    return (x if flat else x.reshape(-1, 1, 8, 8)), y


def train_test_split(x, y, test_fraction=0.2, seed=0):
    """A shuffled split into (x_train, y_train), (x_test, y_test)."""
    order = np.random.RandomState(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def synthetic_images(n, image_size=32, channels=3, n_classes=10, seed=0, noise=0.5):
    """``n`` learnable images of any size: class k is a smooth pattern of frequency k + noise.

    Returns x (n, channels, image_size, image_size) floatX and y (n,) int32. Used to make
    large (up to 224 px) batches for throughput and memory experiments without downloads.
    """
    if not 1 <= image_size <= 1024:
        raise ValueError(f"image_size must be between 1 and 1024 px, got {image_size}")
    rng = np.random.RandomState(seed)
    y = rng.randint(0, n_classes, size=n).astype(np.int32)
    grid = np.linspace(0.0, np.pi, image_size, dtype=np.float32)
    freq = (y + 1).astype(np.float32)[:, None, None]
    base = np.sin(freq * grid[None, :, None]) * np.cos(freq * grid[None, None, :])
    x = base[:, None, :, :] + noise * rng.standard_normal((n, channels, image_size, image_size))
    return x.astype(floatX), y


def random_batch(model, n, seed=0):
    """``n`` learnable samples shaped for ``model``: x (n, *input_shape) floatX, y (n,) int32.

    Image models get :func:`synthetic_images`; a flat input of 3*s*s values gets the same
    images flattened; any other shape gets standard-normal values and random labels.
    """
    shape, n_classes = tuple(model.input_shape), model.n_classes
    if len(shape) == 3:  # (channels, size, size)
        return synthetic_images(n, image_size=shape[1], channels=shape[0],
                                n_classes=n_classes, seed=seed)
    size = math.isqrt(int(np.prod(shape)) // 3)
    if len(shape) == 1 and 3 * size * size == shape[0]:  # flat RGB images, as an MLP reads them
        x, y = synthetic_images(n, image_size=size, channels=3, n_classes=n_classes, seed=seed)
        return x.reshape((n,) + shape), y
    rng = np.random.RandomState(seed)
    return (rng.standard_normal((n,) + shape).astype(floatX),
            rng.randint(0, n_classes, n).astype(np.int32))
