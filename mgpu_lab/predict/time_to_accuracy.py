"""Time to accuracy on N GPUs: the steps a batch needs times the seconds each step takes.

With b samples per GPU on N GPUs the batch is B = N b, and

    time(N, b) = S(N b) x step(N, b),    S(B) = S_min (1 + B_crit / B)

S(B) is McCandlish et al.'s trade-off (:mod:`mgpu_lab.predict.batch_scaling`): fitted on
a measured sweep, or set from published ImageNet runs and an assumption
(:func:`imagenet_resnet50`). step(N, b) is the cost model's step
(:func:`mgpu_lab.predict.costmodel.predict` with ``batch_per_gpu=b``; nodes joined by a
network: :func:`mgpu_lab.predict.network.predict_cluster`). Three limits bound the
choice, all in samples per GPU:

    memory          b <= b_mem, the largest split that fits (memory.max_batch_size)
    communication   b*: the split whose compute equals the exchange (chapter 10); with
                    b < b* a step spends more time communicating than computing
    statistics      B_crit / N: past it, a larger batch barely cuts the steps, so
                    more GPUs buy throughput, not time to accuracy

Where the step is compute c per sample plus an exchange that takes as long as c b*
(compute proportional to the split), time = S_min c (b + b*) (1 + B_crit / (N b)): for
fixed N it is shortest at b = sqrt(b* B_crit / N) (:func:`best_split`), and the time
then is S_min c (sqrt(b*) + sqrt(B_crit / N))^2. Once B_crit / N falls below b*, adding
GPUs saves little time: every GPU already idles through an exchange longer than its
share of the useful batch.

Everything here is a prediction: every :class:`Plan` carries the cost model's label
(calibrated or assumed) and the steps' source (measured and fitted, or assumed).
"""
import functools
import math
from dataclasses import asdict, dataclass

from ..models import resnet_like
from . import costmodel
from .batch_scaling import TradeOff, steps_to_target
from .gpus import get_gpu, usable_bytes
from .memory import max_batch_size
from .network import predict_cluster

__all__ = ["Workload", "Plan", "IMAGENET_TRAIN_IMAGES", "GOYAL_EPOCHS", "GOYAL_BATCH",
           "GOYAL_LARGEST_BATCH", "GOYAL_BASELINE_ERROR", "GOYAL_8K_ERROR_GAP",
           "AKIBA_32K_ACCURACY", "IMAGENET_B_CRIT", "IMAGENET_B_CRITS", "STRATEGIES",
           "PUBLISHED_RUNS", "GPUS_PER_NODE", "NETWORK", "resnet50", "imagenet_resnet50", "measured_workload", "workload", "step", "time_to_target",
           "memory_limit", "communication_limit", "limits", "best_split", "plans", "best_plan", "published_runs"]

# ImageNet (ILSVRC 2012) training images, as TensorFlow's ImageNet reader counts them
# (tensorflow/models, research/slim/datasets/imagenet.py: 'train': 1281167).
IMAGENET_TRAIN_IMAGES = 1_281_167
# Goyal et al. 2017 (arXiv:1706.02677): ResNet-50 trained with batches up to 8192 images
# with no loss of accuracy against the small-batch baseline of 256 (abstract), every model
# for 90 epochs "regardless of minibatch sizes" (their section 5.1). Akiba et al. 2017
# (arXiv:1711.04325, abstract) also train their 32k batch for 90 epochs.
GOYAL_EPOCHS, GOYAL_BATCH, GOYAL_LARGEST_BATCH = 90, 256, 8192
# Published top-1 results on ImageNet's validation images, each checked at its source:
# Goyal et al. section 5.1, the baseline of 256: 23.60 % (+-0.12) top-1 error; section 5.2,
# the 8k batch with gradual warm-up: within 0.14 % of the baseline's error. Akiba et al.'s
# 32k batch (1024 P100s, 15 minutes): 74.9 % top-1 accuracy, as Jia et al. 2018
# (arXiv:1807.11205, abstract) report it (another code base than Goyal et al.'s).
GOYAL_BASELINE_ERROR, GOYAL_8K_ERROR_GAP, AKIBA_32K_ACCURACY = 0.2360, 0.0014, 0.749
# ASSUMPTION, not a measurement: ImageNet ResNet-50's critical batch. No source we could
# check gives it as a number. McCandlish et al. 2018 (abstract) place the limit of useful
# data parallelism on ImageNet at "batches of tens of thousands"; Goyal et al.'s 8192
# reached the baseline's accuracy in the same 90 epochs, which the trade-off allows only if
# B_crit is well above 8192 (with 2^15 it would need 24 % more samples: the default is on
# the cautious side). The explorer also offers 8192, the most pessimistic reading of
# Goyal et al. (their largest loss-free batch taken as B_crit).
IMAGENET_B_CRIT = 32_768
IMAGENET_B_CRITS = (GOYAL_LARGEST_BATCH, IMAGENET_B_CRIT)

# Published ResNet-50 runs on ImageNet, all on P100s with 32 images per GPU, each
# (source key, GPUs, images per GPU, measured hours, where the figure is from); the steps
# are GOYAL_EPOCHS of the images, the published schedules (Goyal et al. section 5.1 for
# the baseline and the 8k batch, Akiba et al.'s abstract for the 32k). The hours are the
# sources' rounded headlines ("one hour", "15 minutes").
PUBLISHED_RUNS = (
    ("nvidia2017fbimagenet", 8, 32, 29.0, "NVIDIA's blog on Goyal et al.: 29 hours on 8 P100s"),
    ("goyal2017accurate", 256, 32, 1.0, "Goyal et al.'s abstract: one hour on 256 GPUs "
                                         "(P100s: NVIDIA's blog)"),
    ("akiba2017extremely", 1024, 32, 0.25, "Akiba et al.'s abstract: 15 minutes on 1024 P100s, "
                                            "batch 32k"),
)

# How the gradients are combined: the cost model's two (every GPU on one fabric: one
# node, or NVSwitch-like links for any N) and the cluster's hierarchical all-reduce
# (nodes of GPUS_PER_NODE over NETWORK; N <= GPUS_PER_NODE is one node).
STRATEGIES = ("host", "ring", "hierarchical")
GPUS_PER_NODE, NETWORK = 8, "IB-EDR"


@dataclass(frozen=True)
class Workload:
    """What is trained and how its steps fall with the batch: ``fit`` (a
    :class:`~mgpu_lab.predict.batch_scaling.TradeOff`), ``model`` (a Model or ModelSpec
    for the cost and memory models), ``label`` (where the fit comes from: 'measured on
    ...' or 'assumed ...'), ``max_batch`` (the largest batch it makes sense for: the
    data set, or None)."""

    name: str
    model: object
    fit: TradeOff
    label: str
    max_batch: int | None = None

    @property
    def b_crit(self):
        return self.fit.b_crit

    def steps(self, batch):
        """S(B) = S_min (1 + B_crit / B): steps to the target with a batch of ``batch``."""
        if self.max_batch is not None and batch > self.max_batch:
            raise ValueError(f"{self.name}: a batch of {batch} is more than the "
                             f"{self.max_batch} samples the workload has (max_batch)")
        return steps_to_target(batch, self.fit)


def workload(name, model, fit, label, max_batch=None):
    """A :class:`Workload`, checked: ``fit`` a TradeOff with positive S_min, E_min."""
    if not isinstance(fit, TradeOff) or not (fit.s_min > 0 and fit.e_min > 0):
        raise ValueError(f"fit must be a TradeOff with s_min > 0 and e_min > 0 "
                         f"(batch_scaling.fit_tradeoff), got {fit!r}")
    if not math.isclose(fit.b_crit, fit.e_min / fit.s_min, rel_tol=1e-9):
        raise ValueError(f"fit.b_crit ({fit.b_crit}) must be e_min / s_min "
                         f"({fit.e_min / fit.s_min})")
    return Workload(name, model, fit, label, max_batch)


def imagenet_resnet50(b_crit=IMAGENET_B_CRIT, model=None):
    """ResNet-50 on ImageNet: B_crit ASSUMED (:data:`IMAGENET_B_CRIT`), and E_min chosen
    so that the trade-off reaches the target in Goyal et al.'s baseline, 90 epochs of
    1,281,167 images at a batch of 256 (the published schedule, their section 5.1):
    E(256) = E_min (1 + 256 / B_crit)."""
    if not b_crit > 0:
        raise ValueError(f"b_crit must be a positive number of samples, got {b_crit!r}")
    e_256 = GOYAL_EPOCHS * IMAGENET_TRAIN_IMAGES
    e_min = e_256 / (1 + GOYAL_BATCH / b_crit)
    fit = TradeOff(e_min / b_crit, e_min, float(b_crit))
    model = resnet50() if model is None else model
    label = (f"assumed: B_crit = {b_crit:,} (McCandlish et al.: 'tens of thousands' on "
             f"ImageNet; Goyal et al.: no loss up to {GOYAL_LARGEST_BATCH:,}); "
             f"E({GOYAL_BATCH}) = {GOYAL_EPOCHS} epochs of ImageNet")
    return workload("ResNet-50 on ImageNet", model, fit, label)


def measured_workload(sweep):
    """The workload of a critical sweep (:mod:`mgpu_lab.measure.critical_sweep`'s result, a
    dict): its digits network, its fitted trade-off, labelled 'measured on <machine>', and
    its training images as the largest batch."""
    from ..presets import digits_model
    fit = sweep.get("fit")
    if not fit:
        raise ValueError("the sweep has no fitted trade-off (fewer than 3 batches reached "
                         "the target): nothing to predict from")
    t = sweep["target"]
    label = (f"{sweep['machine_label']} ({sweep['created'][:10]}): steps to {t['metric']} "
             f"<= {t['value']}, McCandlish et al.'s trade-off fitted")
    return workload(f"digits {sweep['model']['name'].upper()}", digits_model(sweep["model"]["name"]),
                    TradeOff(*(float(fit[k]) for k in TradeOff._fields)), label,
                    int(sweep["data"]["n_train"]))


@functools.lru_cache(maxsize=1)
def resnet50():
    """The ResNet-50-like network at 224 px (graph only: nothing is compiled), built once:
    its FLOP counts and memory replays are cached on it, so later predictions are quick."""
    return resnet_like(50, image_size=224)


@dataclass(frozen=True)
class Plan:
    """One predicted way to train to the target: N GPUs with b samples each."""

    workload: str
    gpu: str
    strategy: str
    n_gpus: int
    batch_per_gpu: int
    batch: int  # N b
    steps: float  # S(B), from the workload's fit
    step_s: float  # the cost model's step
    compute_s: float
    comm_s: float
    seconds: float  # steps x step_s
    gpu_seconds: float  # N x seconds: what the run costs
    samples: float  # B x steps = E(B)
    cost_label: str  # the cost model's efficiency: calibrated (source) or assumed
    steps_label: str  # the workload's: measured and fitted, or assumed

    def as_dict(self):
        return asdict(self)


def _check_strategy(strategy):
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def step(model, gpu, n_gpus, batch_per_gpu, strategy="ring", **kwargs):
    """(step_s, compute_s, comm_s, label) of one step with ``batch_per_gpu`` samples on each
    of ``n_gpus`` GPUs: :func:`costmodel.predict` for 'host' and 'ring';
    :func:`network.predict_cluster` (nodes of :data:`GPUS_PER_NODE` over :data:`NETWORK`,
    no overlap) for 'hierarchical'. ``kwargs`` go to the cost model (efficiency,
    latency, precision, ... for 'host' and 'ring')."""
    _check_strategy(strategy)
    if strategy == "hierarchical":
        g = min(int(n_gpus), GPUS_PER_NODE)
        if n_gpus % g:
            raise ValueError(f"hierarchical: {n_gpus} GPUs are not whole nodes of {g}")
        p = predict_cluster(model, gpu, int(n_gpus), g, NETWORK, int(batch_per_gpu),
                            strategy="hierarchical", overlap=False)
        return p["step_s"], p["compute_s"], p["comm_s"], p["label"]
    p = costmodel.predict(model, gpu, int(n_gpus), batch_per_gpu=int(batch_per_gpu),
                          strategy=strategy, **kwargs)
    return p.step_s, p.compute_s, p.comm_s, p.label


def time_to_target(work, gpu, n_gpus, batch_per_gpu, strategy="ring", **kwargs):
    """The predicted :class:`Plan` of ``work`` (a :class:`Workload`) on ``n_gpus`` GPUs of
    kind ``gpu`` with ``batch_per_gpu`` samples each."""
    step_s, compute_s, comm_s, label = step(work.model, gpu, n_gpus, batch_per_gpu, strategy,
                                            **kwargs)
    batch = int(n_gpus) * int(batch_per_gpu)
    steps = work.steps(batch)
    name = gpu if isinstance(gpu, str) else gpu.name
    return Plan(work.name, name, strategy, int(n_gpus), int(batch_per_gpu), batch, steps,
                step_s, compute_s, comm_s, steps * step_s, n_gpus * steps * step_s,
                batch * steps, label, work.label)


def memory_limit(model, gpu, optimizer="momentum", sharding=0, n_gpus=1):
    """b_mem: the largest split that fits on one GPU of kind ``gpu`` (its memory less the
    reserve, :func:`~mgpu_lab.predict.gpus.usable_bytes`), as chapter 7 computes it."""
    n = int(n_gpus)
    return max_batch_size(model, usable_bytes(get_gpu(gpu) if isinstance(gpu, str) else gpu),
                          n, optimizer, sharding) // n


def communication_limit(model, gpu, n_gpus, strategy="ring", batch_per_gpu=32, **kwargs):
    """b*: the split at which the cost model's compute equals its communication on
    ``n_gpus`` GPUs, from one prediction at ``batch_per_gpu``: comm / (compute per sample)
    (compute taken as proportional to the split; chapter 10's b* for this network, GPU
    and exchange). 0 where nothing is exchanged (one GPU with a ring)."""
    _, compute_s, comm_s, _ = step(model, gpu, n_gpus, batch_per_gpu, strategy, **kwargs)
    return comm_s / (compute_s / batch_per_gpu)


def limits(work, gpu, n_gpus, strategy="ring", optimizer="momentum", **kwargs):
    """The three limits on the split at ``n_gpus`` GPUs, in samples per GPU: ``memory``
    (b_mem), ``communication`` (b*), ``statistics`` (B_crit / N); and ``best``, the
    split :func:`best_split` recommends."""
    b_mem = memory_limit(work.model, gpu, optimizer)
    b_star = communication_limit(work.model, gpu, n_gpus, strategy, **kwargs)
    share = work.b_crit / n_gpus
    return {"n_gpus": int(n_gpus), "memory": b_mem, "communication": b_star,
            "statistics": share, "best": best_split(b_star, work.b_crit, n_gpus, b_mem)}


def best_split(b_star, b_crit, n_gpus, b_mem=None):
    """The split b that makes S_min c (b + b*) (1 + B_crit / (N b)) smallest: the geometric
    mean sqrt(b* B_crit / N) of the communication limit and the statistical share, at
    least one sample and at most ``b_mem`` (the time only grows past its minimum, so the
    memory limit is then the best that fits). A float; 0 if not even one sample fits."""
    if b_star < 0 or not b_crit > 0 or n_gpus < 1:
        raise ValueError(f"need b_star >= 0, b_crit > 0, n_gpus >= 1; got {b_star}, "
                         f"{b_crit}, {n_gpus}")
    b = max(1.0, math.sqrt(b_star * b_crit / n_gpus))
    return b if b_mem is None else min(b, float(b_mem))


def plans(work, gpu, n_range, splits, strategy="ring", **kwargs):
    """Every :class:`Plan` for N in ``n_range`` and b in ``splits`` whose batch the
    workload allows (``max_batch``), in that order."""
    return [time_to_target(work, gpu, n, b, strategy, **kwargs) for n in n_range for b in splits
            if work.max_batch is None or n * b <= work.max_batch]


def best_plan(work, gpu, n_range, splits=None, strategy="ring", optimizer="momentum", **kwargs):
    """The :class:`Plan` with the shortest time to target over N in ``n_range`` and the
    splits ``splits`` (default: powers of two up to the memory limit, and the limit),
    none larger than the memory limit. Raises ValueError if no split fits."""
    b_mem = memory_limit(work.model, gpu, optimizer)
    if b_mem < 1:
        raise ValueError(f"not even one sample of {work.name} fits on a {gpu} "
                         f"(memory less the reserve, {optimizer})")
    if splits is None:
        splits = sorted({2 ** k for k in range(int(math.log2(b_mem)) + 1)} | {b_mem})
    fitting = [b for b in splits if 1 <= b <= b_mem]
    if not fitting:
        raise ValueError(f"none of the splits {list(splits)} fits: the memory limit of "
                         f"{work.name} on a {gpu} is {b_mem} samples per GPU")
    candidates = plans(work, gpu, n_range, fitting, strategy, **kwargs)
    if not candidates:
        raise ValueError(f"no N in {list(n_range)} with a split in {fitting} keeps the batch "
                         f"within the workload's {work.max_batch} samples")
    return min(candidates, key=lambda p: p.seconds)


def published_runs(runs=PUBLISHED_RUNS, strategy="hierarchical", model=None):
    """The published ResNet-50 runs (:data:`PUBLISHED_RUNS`) beside the cost model: for each,
    the steps it ran (GOYAL_EPOCHS epochs of ImageNet at its batch), the predicted step on
    P100s (``strategy``; default the hierarchical all-reduce, nodes of GPUS_PER_NODE over
    NETWORK, which is not the network any of them used) and the predicted hours, against
    the hours measured. Only the step is predicted here, not the steps. At 32 images per
    GPU the predicted exchange (``comm_s``) is a small part of each step: the comparison
    tests the compute's efficiency, and is nearly blind to how the exchange grows with N."""
    model = resnet50() if model is None else model
    out = []
    for key, n, b, hours, where in runs:
        step_s, compute_s, comm_s, label = step(model, "P100", n, b, strategy)
        steps = GOYAL_EPOCHS * IMAGENET_TRAIN_IMAGES / (n * b)
        out.append({"source": key, "where": where, "n_gpus": n, "batch_per_gpu": b,
                    "batch": n * b, "steps": steps, "step_s": step_s, "comm_s": comm_s,
                    "predicted_h": steps * step_s / 3600, "measured_h": hours,
                    "cost_label": label})
    return out
