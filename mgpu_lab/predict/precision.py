"""Precision: how many bytes one stored number takes, by what a training step runs in.

    precision   compute (cost model)          activations, gradients   master weights
    "fp32"      float32 units (TF32 on        4 bytes                  none (the weights
                Ampere+, as frameworks run)                            are the master)
    "tf32"      TF32 Tensor Cores             4 bytes: TF32 rounds the mantissa of the
                                              products' inputs, it stores float32
    "fp16"      FP16 Tensor Cores             2 bytes (mixed precision) 4 bytes per weight
    "bf16"      BF16 Tensor Cores             2 bytes (mixed precision) 4 bytes per weight

Mixed precision (fp16, bf16; Micikevicius et al. 2018), as the memory model counts it (the
accounting of ZeRO, Rajbhandari et al. 2020, i.e. DeepSpeed's, and of Apex AMP's level
O2): the forward and backward passes run on 16-bit copies of the weights and make 16-bit
activations and gradients; the optimizer keeps float32 master weights and its state in
float32. For Adam that is 2 + 2 + 12 bytes per parameter (16-bit weights, 16-bit
gradients; float32 master weights, momentum and variance), the 16 bytes of float32
training (4 + 4 + 8) split otherwise. It holds for every optimizer: 2 + 2 + (4 + 4k) =
4 + 4 + 4k with k state arrays, so mixed precision saves memory in the activations, not
in the model state.

That is one scheme, not every framework's. PyTorch's autocast and Apex AMP's level O1
keep the model's float32 weights and gradients (no master copy) and cast to 16 bits inside
each operation as it runs: 4 + 4 + 4k bytes per parameter, plus about 2 for the 16-bit
copies of the weights while a step runs; 2 bytes more per parameter than the count here
(chapter 7 computes it for the ResNet-50-like network), and DDP then all-reduces float32
gradients. Under autocast some operations (reductions) also stay float32, so the 2-byte
activations are the model's assumption.

What the exchange sends is a separate choice (``wire_precision`` in the cost model and in
:mod:`mgpu_lab.predict.critical`): 16-bit gradients halve the bytes of every exchange.
"""
from .gpus import PRECISIONS

__all__ = ["PRECISIONS", "MIXED", "check_precision", "value_bytes", "master_bytes",
           "is_mixed"]

# The 16-bit precisions, trained in mixed precision with float32 master weights.
MIXED = ("bf16", "fp16")


def check_precision(precision):
    """``precision`` if it is one of :data:`PRECISIONS`, else ``ValueError`` naming them."""
    if isinstance(precision, str) and precision in PRECISIONS:
        return precision
    raise ValueError(f"unknown precision {precision!r}; choose one of "
                     f"{', '.join(repr(p) for p in PRECISIONS)} ('fp16' and 'bf16' are "
                     "mixed precision: 16-bit activations and gradients, float32 master "
                     "weights and optimizer state)")


def is_mixed(precision):
    """True for the 16-bit precisions (mixed precision with float32 master weights)."""
    return check_precision(precision) in MIXED


def value_bytes(precision="fp32"):
    """Bytes of one activation or gradient value: 2 in mixed precision, else 4."""
    return 2 if is_mixed(precision) else 4


def master_bytes(precision="fp32"):
    """Bytes per parameter of float32 master weights kept beside the 16-bit working copy:
    4 in mixed precision, 0 otherwise (the weights themselves are float32)."""
    return 4 if is_mixed(precision) else 0
