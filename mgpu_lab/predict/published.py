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
from .gpus import get_gpu

__all__ = ["PUBLISHED_CSV", "NETWORKS", "DDP_BUCKET_BYTES", "HOROVOD_FUSION_BYTES", "load", "networks", "buckets_for",
           "compare", "is_calibration_row"]

PUBLISHED_CSV = DATA_DIR / "published_throughput.csv"

# The CSV's network names -> the library's builders (224 px, 1000 classes).
NETWORKS = {"ResNet-50": lambda: resnet_like(50), "ResNet-101": lambda: resnet_like(101),
            "ResNet-152": lambda: resnet_like(152), "VGG-16": vgg16_like}

# PyTorch DistributedDataParallel groups gradients into buckets of bucket_cap_mb=25 (MiB)
# by default (PyTorch documentation, torch.nn.parallel.DistributedDataParallel).
DDP_BUCKET_BYTES = 25 * 2 ** 20

# Horovod's tensor fusion: HOROVOD_FUSION_THRESHOLD, 64 MiB by default (Horovod docs).
HOROVOD_FUSION_BYTES = 64 * 2 ** 20

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
    return {n: NETWORKS[n]() for n in (names or _CSV_NETWORKS)}


_CSV_NETWORKS = ("ResNet-50", "ResNet-152", "VGG-16")  # ResNet-101: the multi-node rows


def buckets_for(row, model):
    """How many pieces the framework sends the gradient in: PyTorch DDP fills 25 MiB
    buckets; Horovod (under TensorFlow or MXNet) fuses tensors into buffers of 64 MiB
    (HOROVOD_FUSION_THRESHOLD's default, Horovod's tensor-fusion documentation);
    TensorFlow's benchmarks and MXNet's own kvstore send each parameter tensor on its own."""
    setting = row["framework_setting"]
    size = (DDP_BUCKET_BYTES if setting.startswith("PyTorch") else
            HOROVOD_FUSION_BYTES if "Horovod" in setting else None)
    if size is None:
        return len(model.params)
    return math.ceil(costmodel.gradient_bytes(model) / size)


def compare(rows=None, nets=None, winograd=None, overlap=True, **kwargs):
    """Every published row with the prediction beside it: the row plus ``predicted``
    (images/s), ``error`` (predicted / published - 1), ``efficiency`` (the one used),
    ``label`` (calibrated from what, or uncalibrated), ``calibration_row`` (True for the
    rows the catalogue calibrates on: their error is 0 by construction) and ``buckets``.
    Each row is predicted with its own optimizer (TensorFlow's benchmarks ran plain SGD,
    so the host's update carries no momentum there). ``winograd``: None takes
    :data:`costmodel.DEFAULT_WINOGRAD`. ``kwargs`` go to :func:`costmodel.predict`."""
    rows = load() if rows is None else rows
    nets = nets or networks(sorted({r["network"] for r in rows}))
    out = []
    for r in rows:
        model = nets[r["network"]]
        k = buckets_for(r, model) if overlap else None
        p = costmodel.predict(model, r["gpu"], r["n_gpus"], batch_per_gpu=r["batch_per_gpu"],
                              strategy=r["strategy"], overlap=overlap, precision=r["precision"],
                              winograd=winograd, buckets=k,
                              **{"optimizer": r.get("optimizer") or "momentum", **kwargs})
        out.append({**r, "predicted": p.images_per_s, "error": p.images_per_s / r["images_per_s"] - 1,
                    "efficiency": p.efficiency, "label": p.label, "buckets": k,
                    "calibration_row": is_calibration_row(r), "prediction": p})
    return out


def is_calibration_row(row):
    """True for a row whose figure the GPU catalogue calibrates on (same GPU, precision,
    batch and images/s, one GPU): predicting it only gives the figure back."""
    cal = getattr(get_gpu(row["gpu"]), "calibration", {}).get(row["precision"])
    return (row["n_gpus"] == 1 and row["network"] == "ResNet-50" and cal is not None
            and cal.carried_from is None and cal.batch == row["batch_per_gpu"]
            and cal.images_per_s == row["images_per_s"])
