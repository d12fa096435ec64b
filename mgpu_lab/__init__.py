"""mgpu_lab: data-parallel training with Theano, built from small functions.

One step, and the module of each move (N devices; one device is N=1 of the same path):

    split_batch          one split per device                    split.py
    engine.step          each device computes its split's        engines/ (serial, local, mpi)
                         gradient; the results are exchanged
    stack_gradients      sum_i (n_i / B) g_i                      gradients.py
    optimizer.update     the update rule, where the strategy      optim.py
                         puts it (the host, or every device)
    DataParallelTrainer  ties them together                       trainer.py

The layers, each importing only from the layers below it (tests/test_layers.py checks it):

    1  foundations   _theano, errors, validate, split, gradients, collectives, optim,
                     models, presets, data, checkpoint, sources (one hash of the
                     library for every cache)
    2  predict/      what a graph costs: graph, memory, gpus, costmodel
    3  engines/, trainer   the data-parallel step: base (the protocol), pinning, serial,
                     local (DevicePool), mpi; trainer on top
    4  measure/, figures/, exercises   benchmarks and provenance; plots, widgets, web
                     explorers, tables; the exercises' self-checks
    5  cli, __main__ the command line
"""
from .engines.local import DevicePool
from .engines.serial import SerialEngine
from .gradients import stack_gradients
from .models import ModelSpec
from .split import split_batch
from .trainer import DataParallelTrainer

__version__ = "0.1.0"
__all__ = ["split_batch", "stack_gradients", "DevicePool", "SerialEngine",
           "DataParallelTrainer", "ModelSpec", "__version__"]
