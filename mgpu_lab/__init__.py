"""mgpu_lab: data-parallel training with Theano, built from small functions.

One step, and the module of each move (N devices; one device is N=1 of the same path):

    split_batch          one split per device                       split.py
    engine.step          each device computes its split's gradient  engines/ (serial, local, mpi)
    strategy.on_device   what a device does next, over the engine's  engines/strategies.py
                         transport: nothing (host gather), a ring
                         all-reduce, a reduce-scatter (sharded)...
    stack_gradients      sum_i (n_i / B) g_i, where the host stacks   gradients.py
    optimizer.rule       (values, grads, state, t) -> (values,       optim.py
                         state), where the strategy runs it
    DataParallelTrainer  ties them together, keeps the state          trainer.py

The layers, each importing only from the layers below it (tests/test_layers.py checks it):

    1  foundations   _theano, errors, validate, split, gradients, collectives, optim,
                     models, presets, data, checkpoint, sources (one hash of the
                     library for every cache), statistics (the gradient noise scale)
    2  predict/      what a graph costs: graph, memory, gpus, costmodel
    3  engines/, trainer   the data-parallel step: base (the protocol), update, strategies,
                     serial, local (DevicePool) + worker, mpi, pinning; trainer on top
    4  measure/      benchmarks and provenance: they return data
    5  figures/, exercises   plots, widgets, web explorers, tables (they draw what measure
                     returns); the exercises' self-checks
    6  cli, __main__ the command line
"""
from .engines.local import DevicePool
from .engines.serial import SerialEngine
from .engines.strategies import (STRATEGIES, HierarchicalAllReduce, HostGather, RingAllReduce,
                                 ShardedOptimizer)
from .gradients import stack_gradients
from .models import ModelSpec
from .split import split_batch
from .trainer import DataParallelTrainer

__version__ = "0.1.0"
__all__ = ["split_batch", "stack_gradients", "DevicePool", "SerialEngine",
           "DataParallelTrainer", "ModelSpec", "STRATEGIES", "HostGather", "RingAllReduce",
           "ShardedOptimizer", "HierarchicalAllReduce", "__version__"]
