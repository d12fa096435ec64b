"""A catalogue of real GPUs: memory, peak float32 speed, host link and peer link.

Every figure is copied from the vendor's datasheet named in ``source`` (figures are the
datasheet's, not measurements of ours). Conventions, so the numbers can be compared:

* ``memory_bytes``: the datasheet's "GB" of GPU memory read as GiB (2**30 bytes), which
  is what ``nvidia-smi`` reports, less nothing: the CUDA context and ECC take a few
  hundred MiB that a real run does not get (see :func:`usable_bytes`).
* ``fp32_flops``: peak float32 FLOP/s (FMA counted as 2) at boost clock, without Tensor
  Cores (the book's Theano code runs plain float32).
* ``host_bw`` / ``peer_bw``: bytes/s **per direction**. Datasheets quote links as the
  sum of both directions ("PCIe 32 GB/s", "NVLink 300 GB/s"); we halve that.
  A GPU without NVLink talks to its peers over PCIe: its ``peer_link`` says so and its
  ``peer_bw`` is the PCIe figure (``peer_bw`` may be ``None`` only for a GPU a user
  describes without any peer path; :meth:`GPU.peer_or_host_bw` then falls back to PCIe).
"""
from dataclasses import dataclass

__all__ = ["GPU", "CATALOGUE", "BOOK_GPUS", "get_gpu", "gpu_names", "usable_bytes"]

GiB = 2 ** 30
GB = 10 ** 9
TFLOPS = 10 ** 12


@dataclass(frozen=True)
class GPU:
    """One GPU model (for the K80, one of the two GPUs on the board)."""

    name: str
    memory_bytes: int
    fp32_flops: float  # peak float32 FLOP/s
    host_link: str  # e.g. "PCIe 3.0 x16"
    host_bw: float  # bytes/s per direction, GPU <-> host
    peer_link: str  # e.g. "NVLink 2.0 (6 links)" or "none (PCIe)"
    peer_bw: float | None  # bytes/s per direction per GPU, or None without a peer link
    source: str  # vendor datasheet name, year

    @property
    def memory_gib(self):
        return self.memory_bytes / GiB

    def peer_or_host_bw(self):
        """Bandwidth between two GPUs: the peer link if there is one, else PCIe."""
        return self.peer_bw if self.peer_bw is not None else self.host_bw


_PCIE3 = ("PCIe 3.0 x16", 32 * GB / 2)  # datasheets: "32 GB/s" both directions together
_PCIE4 = ("PCIe 4.0 x16", 64 * GB / 2)
_PCIE5 = ("PCIe 5.0 x16", 128 * GB / 2)
_PCIE3_PEER = ("PCIe 3.0 x16 peer-to-peer (no NVLink)", 32 * GB / 2)

CATALOGUE = {g.name: g for g in [
    # K80: a board with two GK210 GPUs; the datasheet gives the board's totals
    # (8.74 TFLOPS float32 with GPU Boost, 24 GB GDDR5); one GPU gets half of each.
    GPU("K80", 12 * GiB, 8.74 * TFLOPS / 2, *_PCIE3, *_PCIE3_PEER,
        "NVIDIA Tesla K80 GPU Accelerator datasheet, 2014 (per GPU = half the board)"),
    GPU("P100-PCIe", 16 * GiB, 9.3 * TFLOPS, *_PCIE3, *_PCIE3_PEER,
        "NVIDIA Tesla P100 datasheet, 2016 (P100 for PCIe-based servers, 16 GB)"),
    GPU("P100", 16 * GiB, 10.6 * TFLOPS, *_PCIE3, "NVLink 1.0 (4 links)", 160 * GB / 2,
        "NVIDIA Tesla P100 datasheet, 2016 (P100 for NVLink-optimized servers, SXM2)"),
    GPU("V100", 16 * GiB, 15.7 * TFLOPS, *_PCIE3, "NVLink 2.0 (6 links)", 300 * GB / 2,
        "NVIDIA Tesla V100 GPU Accelerator datasheet, 2018 (V100 SXM2, 16 GB)"),
    GPU("V100-32GB", 32 * GiB, 15.7 * TFLOPS, *_PCIE3, "NVLink 2.0 (6 links)", 300 * GB / 2,
        "NVIDIA Tesla V100 GPU Accelerator datasheet, 2018 (V100 SXM2, 32 GB)"),
    GPU("A100", 40 * GiB, 19.5 * TFLOPS, *_PCIE4, "NVLink 3.0 (12 links)", 600 * GB / 2,
        "NVIDIA A100 Tensor Core GPU datasheet, 2020 (A100 40GB SXM)"),
    GPU("A100-80GB", 80 * GiB, 19.5 * TFLOPS, *_PCIE4, "NVLink 3.0 (12 links)", 600 * GB / 2,
        "NVIDIA A100 Tensor Core GPU datasheet, 2021 (A100 80GB SXM)"),
    GPU("H100", 80 * GiB, 67 * TFLOPS, *_PCIE5, "NVLink 4.0 (18 links)", 900 * GB / 2,
        "NVIDIA H100 Tensor Core GPU datasheet, 2022 (H100 SXM5, 80 GB)"),
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


def usable_bytes(gpu, reserved=512 * 2 ** 20):
    """Memory left for the training step after the CUDA context and the framework's own
    allocations (``reserved``, 512 MiB by default: an assumption, not a datasheet figure)."""
    return get_gpu(gpu).memory_bytes - int(reserved)
