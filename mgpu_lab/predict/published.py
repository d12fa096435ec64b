"""Published multi-GPU training throughputs (``data/published_throughput.csv``) and the
cost model's prediction for each of them.

The catalogue's efficiencies are calibrated on the single-GPU ResNet-50 rows only
(:mod:`mgpu_lab.predict.gpus`); :func:`compare` predicts every row, so the multi-GPU rows
and the other networks test the model on figures it never saw. Sources: data/README.md.
"""
import csv
import math

from ..data import DATA_DIR
from ..models import resnet_like, vgg16_like
from . import costmodel

__all__ = ["PUBLISHED_CSV", "NETWORKS", "DDP_BUCKET_BYTES", "load", "networks", "buckets_for",
           "compare"]

PUBLISHED_CSV = DATA_DIR / "published_throughput.csv"

# The CSV's network names -> the library's builders (224 px, 1000 classes).
NETWORKS = {"ResNet-50": lambda: resnet_like(50), "ResNet-152": lambda: resnet_like(152),
            "VGG-16": vgg16_like}

# PyTorch DistributedDataParallel groups gradients into buckets of bucket_cap_mb=25 (MiB)
# by default (PyTorch documentation, torch.nn.parallel.DistributedDataParallel).
DDP_BUCKET_BYTES = 25 * 2 ** 20

_INT, _FLOAT = ("n_gpus", "batch_per_gpu"), ("images_per_s",)


def load(path=PUBLISHED_CSV):
    """The published rows as dicts (numbers converted), in the file's order."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.update({k: int(r[k]) for k in _INT}, **{k: float(r[k]) for k in _FLOAT})
    return rows


def networks(names=None):
    """{name: model} for the CSV's networks (graphs only; VGG-16 takes a second or two)."""
    return {n: NETWORKS[n]() for n in (names or NETWORKS)}


def buckets_for(row, model):
    """How many pieces the framework sends the gradient in: TensorFlow's benchmarks send
    each parameter tensor on its own; PyTorch DDP fills 25 MiB buckets."""
    if row["framework_setting"].startswith("PyTorch"):
        return math.ceil(costmodel.gradient_bytes(model) / DDP_BUCKET_BYTES)
    return len(model.params)


def compare(rows=None, nets=None, winograd=1.0, overlap=True, **kwargs):
    """Every published row with the prediction beside it: the row plus ``predicted``
    (images/s), ``error`` (predicted / published - 1), ``efficiency`` (the calibration
    used) and ``buckets``. ``kwargs`` go to :func:`costmodel.predict`."""
    rows = load() if rows is None else rows
    nets = nets or networks(sorted({r["network"] for r in rows}))
    out = []
    for r in rows:
        model = nets[r["network"]]
        k = buckets_for(r, model) if overlap else None
        p = costmodel.predict(model, r["gpu"], r["n_gpus"], r["n_gpus"] * r["batch_per_gpu"],
                              strategy=r["strategy"], overlap=overlap, precision=r["precision"],
                              winograd=winograd, buckets=k, **kwargs)
        out.append({**r, "predicted": p.images_per_s, "error": p.images_per_s / r["images_per_s"] - 1,
                    "efficiency": p.efficiency, "buckets": k, "prediction": p})
    return out
