"""mgpu_lab: data-parallel training with Theano, built from small functions.

    split_batch        -> one split per device                (split.py)
    DevicePool         -> each device computes its gradient   (devices.py)
    stack_gradients    -> sum_i (n_i / N) g_i on the host     (gradients.py)
    optimizer.update   -> the update rule on the host         (optim.py)
    DataParallelTrainer ties them together                    (trainer.py)
"""
from .devices import DevicePool
from .engine import SerialEngine
from .gradients import stack_gradients
from .models import ModelSpec
from .split import split_batch
from .trainer import DataParallelTrainer

__version__ = "0.1.0"
__all__ = ["split_batch", "stack_gradients", "DevicePool", "SerialEngine",
           "DataParallelTrainer", "ModelSpec", "__version__"]
