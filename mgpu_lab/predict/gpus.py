"""A catalogue of real GPUs: memory, peak speeds, host link, peer link, and a calibration.

Every hardware figure is copied from the vendor's datasheet named in ``source`` (figures
are the datasheet's, not measurements of ours). Conventions, so the numbers can be compared:

* ``memory_bytes``: the datasheet's "GB" of GPU memory read as GiB (2**30 bytes). That is
  a rounding, stated here because ``nvidia-smi`` reports other totals, which also depend on
  the driver (:data:`NVIDIA_SMI_MIB`, cited): recent drivers report exactly these 40 and
  80 GiB for the A100s but 81,559 MiB (0.4 % less than 80 GiB) for the H100; driver 470
  reported 40,536 MiB for the A100 40GB; one GPU of a K80 reports 11,441 MiB, 7 % less
  than the 12 GiB used here. The CUDA context and the framework take a few hundred MiB
  more that a run never gets (:func:`usable_bytes`). For the K80 that reserve does not
  cover the 847 MiB ``nvidia-smi`` already withholds, so its usable memory here is about
  8 % too large.
* ``fp32_flops``: peak float32 FLOP/s (FMA counted as 2) at boost clock, without Tensor
  Cores (the book's Theano code runs plain float32). ``tensor_flops``: the datasheet's
  dense Tensor Core peaks by precision ("tf32", "bf16", "fp16"); datasheets print the
  figures "with sparsity" too, which are twice these. :meth:`GPU.peak` picks one.
* ``host_bw``: bytes/s **per direction** of one transfer between the GPU and the host
  with the GPU's host link to itself. Datasheets quote links as the sum of both directions
  ("PCIe 32 GB/s"); we halve that. The host gather charges its 2N transfers one after
  another at this figure: the model's pessimistic bound, in which no two transfers ever
  share a link (or overlap). For the K80 this is the board's whole x16 link, although the
  board's two GPUs sit behind it (``gpus_per_board``): in the serial queue only one of them
  uses it at a time.
* ``peer_bw``: bytes/s per direction of **all** the GPU's peer links together (for NVLink,
  the datasheet's total over every link, halved): what a GPU can move to all its peers at
  once, which several rings over all the GPUs of a server (NCCL's channels) reach at
  best. One ring between particular GPUs gets only the links that join them:
  :meth:`GPU.ring_bw`. A GPU without NVLink talks to its peers over PCIe: its
  ``peer_link`` says so and its ``peer_bw`` is the PCIe figure (``peer_bw`` may be ``None``
  only for a GPU a user describes without any peer path; :meth:`GPU.peer_or_host_bw` then
  falls back to PCIe).
* ``ring_links`` and ``link_bw``: for a GPU whose reference server joins its GPUs by
  direct links (the P100 and the V100 in a DGX-1's hybrid cube-mesh), how many links join the
  slowest neighbouring pair of the best single ring through n of its GPUs, and one link's
  bytes/s per direction. :meth:`GPU.ring_bw` multiplies them.
* ``calibration``: {precision: :class:`Calibration`}, one published single-GPU training
  throughput of ResNet-50 that fixes the GPU's compute efficiency: the fraction of
  :meth:`GPU.peak` its arithmetic-bound kernels reach, solved so that the cost model's
  roofline gives the published figure back (:data:`ROOFLINE_EFFICIENCY`;
  :meth:`Calibration.efficiency` is the older, FLOPs-only view: the fraction of the peak
  the whole step sustains). Only single-GPU figures are used: the multi-GPU figures of
  the same sources stay unseen, to test the model (``data/published_throughput.csv``,
  chapter 11 of the book). A calibration is per GPU *and* precision. The A100 40GB carries
  the A100 80GB's over: both are the same GA100 chip with the same clocks and peaks in
  NVIDIA's A100 datasheet; only memory size and bandwidth differ (1,555 against 2,039
  GB/s), and the roofline charges each its own bandwidth.
  A GPU and precision without a calibration is *uncalibrated*: predictions for it use an
  assumed efficiency and say so (:func:`mgpu_lab.predict.costmodel.calibration_for`).
  The assumption is a calibrated sibling's compute efficiency where there is one
  (``assume_like``): the P100 SXM2's for the P100 PCIe (the same GP100 chip at lower
  clocks), the A100 80GB's for the H100 SXM5 and PCIe (the newest calibrated Tensor Core
  GPU). The H100 keeps its own peak and its own memory bandwidth: that its kernels reach
  the A100's fractions of them is the assumption, and labelled as one. BF16, on the same
  Tensor Cores at the same dense peak as FP16, borrows the FP16 figure
  (:func:`mgpu_lab.predict.costmodel.borrowed_calibration`).
* ``memory_bw``: the datasheet's GPU memory bandwidth, bytes/s (for the K80, half the
  board's 480 GB/s, as for its FLOP/s): the second roof of the cost model's roofline
  (:func:`mgpu_lab.predict.costmodel.roofline_seconds`). ``generation``: the architecture
  (Kepler ... Hopper). Each figure is the datasheet's named in ``source``: K80 480 GB/s per
  board; P100 (SXM2 and PCIe 16 GB) 732 GB/s; V100 SXM2 (16 and 32 GB) 900 GB/s; A100 40GB
  1,555 GB/s and A100 80GB SXM 2,039 GB/s; H100 SXM5 3.35 TB/s and H100 PCIe 2 TB/s.
* :data:`MEMORY_EFFICIENCY`: the fraction of ``memory_bw`` a training step's memory-bound
  kernels reach, one number for every GPU and precision (see its comment for how it is
  fixed: no published figure here can separate it from the compute efficiency).
* Precision as frameworks run it (:meth:`GPU.framework_precision`): on Ampere and later,
  "fp32" convolutions run on TF32 Tensor Cores by default (PyTorch's CUDA semantics notes,
  "TensorFloat-32 (TF32) on Ampere devices": ``torch.backends.cudnn.allow_tf32`` defaults
  to True; TensorFlow's ``tf.config.experimental.enable_tensor_float_32_execution``:
  "TensorFloat-32 is enabled by default"), so a
  float32 training step there is charged at the TF32 peak and calibration. Convolutions
  are > 99 % of a ResNet's FLOPs, so the dense layers (float32 in PyTorch >= 1.12) are
  not split out.
"""
from dataclasses import dataclass, field

__all__ = ["GPU", "Calibration", "CATALOGUE", "BOOK_GPUS", "PRECISIONS", "DEFAULT_RESERVED",
           "NVIDIA_SMI_MIB", "MEMORY_EFFICIENCY", "ROOFLINE_EFFICIENCY",
           "get_gpu", "gpu_names", "usable_bytes", "offered_precisions"]

GiB = 2 ** 30
GB = 10 ** 9
TFLOPS = 10 ** 12

# "fp32": plain float32 units; the others run the convolutions and matrix products on
# Tensor Cores ("fp16"/"bf16": mixed precision with float32 master weights).
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

# Assumption, not a datasheet figure: memory per GPU a training step never gets (the CUDA
# context with its kernels, the framework's own allocations and libraries). Its size varies
# with the GPU, the driver and the framework; users report a few hundred MiB to ~0.8 GB for
# a bare PyTorch process (e.g. github.com/pytorch/pytorch/issues/34323: 781 MB in nvidia-smi).
DEFAULT_RESERVED = 512 * 2 ** 20

# The fraction of the datasheet memory bandwidth the memory-bound kernels of a training
# step reach, as the cost model counts their bytes (mgpu_lab.predict.graph.kernels): one
# number for every GPU and precision. One published figure per GPU and precision cannot
# separate it from the compute efficiency (one equation, two unknowns), and the sources
# with several networks per GPU (TensorFlow's, on the K80 and P100) are bound by their
# arithmetic, so their figures hardly move with it. So it is fixed by a rule, on the
# calibration figures alone: the smallest value (to 0.01) at which no calibrated compute
# efficiency exceeds it: two choices, neither measured (that streaming kernels reach at
# least the fraction of their roof that the best-calibrated convolutions reach of theirs,
# and that the smallest such value is the one to take). The H100's check against MLPerf
# depends on it (chapter 11 prints the sensitivity). Much lower values are impossible:
# even with its arithmetic at the full peak, each figure needs at least 0.16 (the K80's)
# to 0.48 (the V100's in mixed precision; validation.memory_efficiency_floor). It is a
# fraction of the bytes *counted*: the library's networks have no batch normalization,
# whose traffic real ResNets add, so it is no measured fraction of a GPU's bandwidth.
# mgpu_lab.predict.validation.memory_efficiency_rule recomputes it (a test checks it).
MEMORY_EFFICIENCY = 0.6

# Compute efficiencies the roofline calibration gives at MEMORY_EFFICIENCY with the
# Winograd F(4x4,3x3) count (the cost model's default), keyed (GPU, precision, published
# images/s, batch): mgpu_lab.predict.costmodel.calibrated_efficiency returns these
# without building ResNet-50's graph, and solves anything else; a test recomputes them.
ROOFLINE_EFFICIENCY = {
    ('K80', 'fp32', 51.9, 64): 0.24848528740275574,
    ('P100', 'fp32', 219, 64): 0.4668403330427453,
    ('V100', 'fp32', 367, 112): 0.5901752971946789,
    ('V100', 'fp16', 1200, 256): 0.36274547335880325,
    ('V100-32GB', 'fp32', 356, 112): 0.564932783889337,
    ('V100-32GB', 'fp16', 1156, 256): 0.3311792047937148,
    ('A100-80GB', 'tf32', 938, 256): 0.1610102682402474,
    ('A100-80GB', 'fp16', 2470, 256): 0.26355996573517615,
}

# Total memory as nvidia-smi reports it (MiB), beside which the catalogue's GiB are a
# rounding: (GPU, MiB, where it was reported). Not used by any prediction.
NVIDIA_SMI_MIB = [
    ("K80", 11441, "github.com/rcgsheffield/sheffield_hpc/pull/1030 (nvidia-smi 396.37, "
                   "one GPU of a K80 board)"),
    ("A100", 40536, "github.com/nanopool/phoenix-miner/issues/17 (nvidia-smi 470.82.01, "
                    "A100-SXM4 40GB)"),
    ("A100", 40960, "github.com/modal-labs/modal-client/pull/2797 (recent drivers, A100 40GB)"),
    ("A100-80GB", 81920, "github.com/modal-labs/modal-client/pull/2797 (recent drivers)"),
    ("H100", 81559, "github.com/modal-labs/modal-client/pull/2797 (recent drivers)"),
]


@dataclass(frozen=True)
class Calibration:
    """One published single-GPU throughput of ResNet-50 (``mgpu_lab.models.resnet_like(50)``
    stands for it) and the FLOPs our graph counts for that step.

    ``flops``: :func:`mgpu_lab.predict.graph.count_flops` of ResNet-50 at ``batch``;
    ``winograd_flops``: the part of it in 3x3 stride-1 convolutions (all three directions),
    which fast convolution algorithms do with fewer multiplications (chapter 11)."""

    images_per_s: float
    batch: int  # per GPU
    flops: int  # one training step at ``batch``, counted on our graph
    winograd_flops: int  # of which in 3x3 stride-1 convolutions
    source: str
    carried_from: str | None = None  # another GPU of the same chip whose figure this is

    def efficiency(self, peak_flops, winograd=1.0):
        """The fraction of ``peak_flops`` the published step sustains: FLOPs per second
        it did (our count, 3x3 convolutions divided by ``winograd``) over the peak."""
        if winograd < 1:
            raise ValueError(f"winograd must be >= 1 (1: direct convolution), got {winograd}")
        flops = self.flops - self.winograd_flops * (1 - 1 / winograd)
        return self.images_per_s * flops / (self.batch * peak_flops)


@dataclass(frozen=True)
class GPU:
    """One GPU model (for the K80, one of the two GPUs on the board)."""

    name: str
    memory_bytes: int
    fp32_flops: float  # peak float32 FLOP/s
    host_link: str  # e.g. "PCIe 3.0 x16"
    host_bw: float  # bytes/s per direction, GPU <-> host, one transfer with the link to itself
    peer_link: str  # e.g. "NVLink 2.0 (6 links)" or "none (PCIe)"
    peer_bw: float | None  # bytes/s per direction per GPU, or None without a peer link
    source: str  # vendor datasheet name, year
    tensor_flops: dict = field(default_factory=dict, hash=False)  # {precision: dense FLOP/s}
    calibration: dict = field(default_factory=dict, hash=False)  # {precision: Calibration}
    gpus_per_board: int = 1  # GPUs sharing one host link (K80: 2)
    base_fp32_flops: float | None = None  # at base clock, where the datasheet gives it
    assume_like: str | None = None  # a calibrated GPU whose efficiency is assumed here
    ring_links: dict = field(default_factory=dict, hash=False)  # {n GPUs: links, slowest hop}
    link_bw: float | None = None  # one peer link, bytes/s per direction (with ring_links)
    memory_bw: float | None = None  # GPU memory bytes/s (datasheet); None: FLOPs-only model
    generation: str = ""  # architecture: Kepler, Pascal, Volta, Ampere, Hopper

    @property
    def memory_gib(self):
        return self.memory_bytes / GiB

    def peer_or_host_bw(self):
        """Bandwidth between two GPUs: the peer link if there is one, else PCIe."""
        return self.peer_bw if self.peer_bw is not None else self.host_bw

    def ring_bw(self, n_gpus):
        """Bytes/s per direction that ONE ring through ``n_gpus`` of these GPUs gets: the
        links joining its slowest neighbouring pair (``ring_links``) times one link's
        bandwidth, where the catalogue knows the server's topology; otherwise (no such
        entry, or more GPUs than the server holds) :meth:`peer_or_host_bw`."""
        links = self.ring_links.get(int(n_gpus))
        if links is None or self.link_bw is None:
            return self.peer_or_host_bw()
        return links * self.link_bw

    def peak(self, precision="fp32"):
        """Peak FLOP/s at ``precision``: float32 units, or the Tensor Cores' dense peak."""
        if precision == "fp32":
            return self.fp32_flops
        if precision not in self.tensor_flops:
            have = ", ".join(["fp32", *self.tensor_flops])
            raise ValueError(f"{self.name} has no {precision!r} peak in the catalogue; it has: {have}")
        return self.tensor_flops[precision]

    def framework_precision(self, precision="fp32"):
        """(the precision a framework really runs, why): "fp32" on a GPU with TF32 Tensor
        Cores runs its convolutions as TF32 by default; every other choice is itself."""
        if precision == "fp32" and "tf32" in self.tensor_flops:
            return "tf32", ("fp32 convolutions run as TF32 on Tensor Cores by default "
                            "(PyTorch cudnn.allow_tf32, TensorFlow >= 2.4)")
        return precision, "as requested"


_PCIE3 = ("PCIe 3.0 x16", 32 * GB / 2)  # datasheets: "32 GB/s" both directions together
_PCIE4 = ("PCIe 4.0 x16", 64 * GB / 2)
_PCIE5 = ("PCIe 5.0 x16", 128 * GB / 2)
_PCIE3_PEER = ("PCIe 3.0 x16 peer-to-peer (no NVLink)", 32 * GB / 2)
_PCIE5_PEER = ("PCIe 5.0 x16 peer-to-peer (NVLink bridges join pairs only)", 128 * GB / 2)
# K80: the board's two GPUs sit behind an on-board PCIe switch and share its one x16 link
# to the host. The host gather queues its transfers at the host, one at a time (the
# model's pessimistic bound), so a transfer never shares the link: each has the board's
# whole 16 GB/s per direction (host_bw; one convention in chapter 10's figure and in
# predict()). The ring is modelled ordered board by board, as NCCL orders rings by
# topology: the step inside a board stays on the board's switch, and each board's x16 link
# carries one ring flow per direction (in from the previous board, out to the next), so a
# ring step also runs at the link's full 16 GB/s per direction. (Ordered at random, two
# flows could share a board's link, and half of it would be the figure.)
_K80_LINK = ("PCIe 3.0 x16, shared by the board's 2 GPUs (one transfer at a time)", 32 * GB / 2)
_K80_PEER = ("PCIe 3.0 ring ordered board by board: on-board switch, then one flow per "
             "direction on each board's x16 link (no NVLink)", 32 * GB / 2)

# V100 SXM2 in a DGX-1 (hybrid cube-mesh): six NVLinks per GPU, 25 GB/s per direction each;
# some pairs are joined by two links, some by one, some by none; the pairs joined by two
# form one cycle through all 8 GPUs, and no shorter one. So one ring of 2 GPUs (a pair
# joined by two links) gets 50 GB/s per direction, a ring of 3 to 7 GPUs has a pair joined
# by a single link (25 GB/s), and a ring of all 8 can follow the two-link cycle (50 GB/s).
# The datasheet's 150 GB/s per direction is all six links at once: several rings over the
# 8 GPUs together (NVIDIA DGX-1 with Tesla V100 System Architecture white paper, 2017;
# NVIDIA Tesla V100 GPU Architecture white paper, 2017, "hybrid cube-mesh" figure).
_DGX1_V100_RING_LINKS = {2: 2, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 2}
_NVLINK2 = 25 * GB  # one NVLink 2.0 link, per direction

# P100 SXM2 in a DGX-1 (the first hybrid cube-mesh): four NVLinks per GPU, 20 GB/s per
# direction each; each GPU's four links go to four different GPUs (the three others of its
# quad and one of the other quad), so no pair shares two links. One ring through 2 to 8 of
# the GPUs therefore gets one link, 20 GB/s per direction; the datasheet's 80 GB/s per
# direction is all four links at once, which only several rings together reach (NVIDIA DGX-1
# System Architecture white paper, WP-08437-001_v02, 2017; NVIDIA Tesla P100 white paper,
# WP-08019-001_v01.1, 2016).
_DGX1_P100_RING_LINKS = {n: 1 for n in range(2, 9)}
_NVLINK1 = 20 * GB  # one NVLink 1.0 link, per direction

_TF = "TensorFlow benchmarks (tensorflow.org/performance/benchmarks, tested May 2017)"
_DLE = ("NVIDIA DeepLearningExamples, PyTorch ResNet50 v1.5 README, 'Training performance' "
        "(pytorch-21.03 NGC container); batch from its configs.yml")


# ResNet-50-like at 224 px, one training step, counted on our graph (tests recount them):
# all FLOPs at each calibration batch, and the 3x3 stride-1 conv FLOPs per image (these
# are exactly linear in the batch; the total is not quite, by the softmax and mean terms).
RN50_FLOPS, RN50_WINOGRAD_FLOPS = 24_403_366_035, 9_017_229_312
RN50_STEP_FLOPS = {64: 1_561_813_689_456, 112: 2_733_173_935_872, 256: 6_247_254_675_120}


def _rn50(images_per_s, batch, source):
    """A ResNet-50 calibration at ``batch`` images per GPU."""
    return Calibration(images_per_s, batch, RN50_STEP_FLOPS[batch], RN50_WINOGRAD_FLOPS * batch,
                       source)


def _carried(calibrations, from_gpu):
    """The same published figures for another GPU of the same chip and peaks."""
    return {p: Calibration(c.images_per_s, c.batch, c.flops, c.winograd_flops,
                           f"carried over from {from_gpu} (same GA100 chip and peaks): "
                           f"{c.source}", carried_from=from_gpu)
            for p, c in calibrations.items()}


_A100_80_CAL = {"tf32": _rn50(938, 256, _DLE + ", DGX A100 80GB, TF32, 1 GPU"),
                "fp16": _rn50(2470, 256, _DLE + ", DGX A100 80GB, mixed precision, 1 GPU")}

CATALOGUE = {g.name: g for g in [
    # K80: a board with two GK210 GPUs; the datasheet gives the board's totals
    # (8.74 TFLOPS float32 with GPU Boost, 5.6 at base clock, 24 GB GDDR5, 480 GB/s); one
    # GPU gets half.
    GPU("K80", 12 * GiB, 8.74 * TFLOPS / 2, *_K80_LINK, *_K80_PEER,
        "NVIDIA Tesla K80 GPU Accelerator datasheet, 2014 (per GPU = half the board)",
        calibration={"fp32": _rn50(51.9, 64,
                                   _TF + ", Google Compute Engine K80, synthetic data, 1 GPU")},
        gpus_per_board=2, base_fp32_flops=5.6 * TFLOPS / 2, memory_bw=480 * GB / 2,
        generation="Kepler"),
    GPU("P100-PCIe", 16 * GiB, 9.3 * TFLOPS, *_PCIE3, *_PCIE3_PEER,
        "NVIDIA Tesla P100 datasheet, 2016 (P100 for PCIe-based servers, 16 GB)",
        assume_like="P100", memory_bw=732 * GB, generation="Pascal"),
    GPU("P100", 16 * GiB, 10.6 * TFLOPS, *_PCIE3, "NVLink 1.0 (4 links)", 160 * GB / 2,
        "NVIDIA Tesla P100 datasheet, 2016 (P100 for NVLink-optimized servers, SXM2)",
        ring_links=_DGX1_P100_RING_LINKS, link_bw=_NVLINK1,
        calibration={"fp32": _rn50(219, 64,
                                   _TF + ", NVIDIA DGX-1 (P100), synthetic data, 1 GPU")},
        memory_bw=732 * GB, generation="Pascal"),
    GPU("V100", 16 * GiB, 15.7 * TFLOPS, *_PCIE3, "NVLink 2.0 (6 links)", 300 * GB / 2,
        "NVIDIA Tesla V100 GPU Accelerator datasheet, 2018 (V100 SXM2, 16 GB)",
        tensor_flops={"fp16": 125 * TFLOPS},
        ring_links=_DGX1_V100_RING_LINKS, link_bw=_NVLINK2,
        calibration={"fp32": _rn50(367, 112,
                                   _DLE + ", DGX-1 16GB, FP32, 1 GPU"),
                     "fp16": _rn50(1200, 256,
                                   _DLE + ", DGX-1 16GB, mixed precision, 1 GPU")},
        memory_bw=900 * GB, generation="Volta"),
    GPU("V100-32GB", 32 * GiB, 15.7 * TFLOPS, *_PCIE3, "NVLink 2.0 (6 links)", 300 * GB / 2,
        "NVIDIA Tesla V100 GPU Accelerator datasheet, 2018 (V100 SXM2, 32 GB)",
        tensor_flops={"fp16": 125 * TFLOPS},
        ring_links=_DGX1_V100_RING_LINKS, link_bw=_NVLINK2,
        calibration={"fp32": _rn50(356, 112,
                                   _DLE + ", DGX-1 32GB, FP32, 1 GPU"),
                     "fp16": _rn50(1156, 256,
                                   _DLE + ", DGX-1 32GB, mixed precision, 1 GPU")},
        memory_bw=900 * GB, generation="Volta"),
    GPU("A100", 40 * GiB, 19.5 * TFLOPS, *_PCIE4, "NVLink 3.0 (12 links)", 600 * GB / 2,
        "NVIDIA A100 Tensor Core GPU datasheet, 2020 (A100 40GB SXM)",
        tensor_flops={"tf32": 156 * TFLOPS, "bf16": 312 * TFLOPS, "fp16": 312 * TFLOPS},
        calibration=_carried(_A100_80_CAL, "A100-80GB"), memory_bw=1555 * GB,
        generation="Ampere"),
    GPU("A100-80GB", 80 * GiB, 19.5 * TFLOPS, *_PCIE4, "NVLink 3.0 (12 links)", 600 * GB / 2,
        "NVIDIA A100 Tensor Core GPU datasheet, 2021 (A100 80GB SXM)",
        tensor_flops={"tf32": 156 * TFLOPS, "bf16": 312 * TFLOPS, "fp16": 312 * TFLOPS},
        calibration=_A100_80_CAL, memory_bw=2039 * GB, generation="Ampere"),
    # H100 SXM5 and PCIe: the datasheet prints Tensor Core peaks with sparsity (SXM5: 989
    # TF32, 1,979 BF16/FP16 TFLOPS; PCIe: 756 and 1,513); the dense peaks used here are half.
    GPU("H100", 80 * GiB, 67 * TFLOPS, *_PCIE5, "NVLink 4.0 (18 links)", 900 * GB / 2,
        "NVIDIA H100 Tensor Core GPU datasheet, 2022 (H100 SXM5, 80 GB)",
        tensor_flops={"tf32": 989 / 2 * TFLOPS, "bf16": 1979 / 2 * TFLOPS,
                      "fp16": 1979 / 2 * TFLOPS},
        assume_like="A100-80GB", memory_bw=3350 * GB, generation="Hopper"),
    # H100 PCIe: NVLink bridges join pairs of cards only (600 GB/s, both directions), so a
    # ring through more of them, as the catalogue's reference server has, runs over PCIe.
    GPU("H100-PCIe", 80 * GiB, 51 * TFLOPS, *_PCIE5, *_PCIE5_PEER,
        "NVIDIA H100 Tensor Core GPU datasheet, 2022 (H100 PCIe, 80 GB)",
        tensor_flops={"tf32": 756 / 2 * TFLOPS, "bf16": 1513 / 2 * TFLOPS,
                      "fp16": 1513 / 2 * TFLOPS},
        assume_like="A100-80GB", memory_bw=2000 * GB, generation="Hopper"),
]}

# The kinds the book's tables and figures show (one per generation).
BOOK_GPUS = ("K80", "P100", "V100", "A100", "H100")


def gpu_names():
    return list(CATALOGUE)


def get_gpu(name):
    """The :class:`GPU` called ``name`` (case does not matter), or a ValueError listing
    the known names. A :class:`GPU` is returned unchanged."""
    if isinstance(name, GPU):
        return name
    by_lower = {k.lower(): g for k, g in CATALOGUE.items()}
    key = str(name).strip().lower()
    if key not in by_lower:
        raise ValueError(f"unknown GPU {name!r}; known GPUs: {', '.join(CATALOGUE)}")
    return by_lower[key]


def offered_precisions(gpu):
    """The precisions the book offers for ``gpu``: "fp32" and its Tensor Core ones."""
    return ("fp32", *get_gpu(gpu).tensor_flops)


def usable_bytes(gpu, reserved=DEFAULT_RESERVED):
    """Memory left for the training step after the CUDA context and the framework's own
    allocations (``reserved``: :data:`DEFAULT_RESERVED`, an assumption, by default)."""
    return get_gpu(gpu).memory_bytes - int(reserved)
