"""Kernel widgets (ipywidgets) for the chapters opened as notebooks: they call the library
on every change, so they need a running kernel. The web book shows
:mod:`mgpu_lab.figures.explorers` instead (computed when the book is built).

    batch_limits_widget()   chapter 7: GPU kind, image size, depth, number of GPUs,
                            optimizer, sharding (ZeRO stage), precision, recomputation
    throughput_widget()     chapter 6: measure the benchmark on 1..N local devices
"""
import contextlib
import functools
import io

import ipywidgets as widgets
import matplotlib
import matplotlib.pyplot as plt
from IPython.display import Image, display

from .. import models, presets
from ..measure import bench
from ..predict import gpus, memory, precision as _precision
from . import plots, tables

__all__ = ["SHARDING_CHOICES", "PRECISION_CHOICES", "network", "limits_figure", "untracked", "show_figure",
           "limits_view", "batch_limits_widget", "measure_view", "throughput_widget"]

# The widget's sharding menu: (label, ZeRO stage).
SHARDING_CHOICES = (("none", 0), ("1: optimizer state", 1), ("2: + gradients", 2),
                    ("3: + parameters", 3))
# The widget's precision menu: (label, precision), every one the memory model knows.
PRECISION_CHOICES = tuple((p + (", mixed" if _precision.is_mixed(p) else ""), p)
                          for p in _precision.PRECISIONS)


@functools.lru_cache(maxsize=32)
def network(depth, image_size):
    """A ResNet-like network's graph (built once per depth and size; never compiled)."""
    return models.resnet_like(depth, image_size=image_size)


def limits_figure(gpu="V100", image_size=224, depth=50, n_gpus=4, optimizer="momentum",
                  sharding=0, precision="fp32", recompute=False):
    """(summary, figure): the predicted limit, and the busiest GPU's memory at its largest
    split, on the GPU's memory less :data:`~mgpu_lab.predict.gpus.DEFAULT_RESERVED`, with
    the model state sharded over ``n_gpus`` GPUs as ZeRO stage ``sharding`` (0: none), at
    ``precision`` (mixed for "fp16" and "bf16"), with or without activation ``recompute``."""
    model, kind = network(depth, image_size), gpus.get_gpu(gpu)
    stage, precision = memory.check_sharding(sharding), _precision.check_precision(precision)
    how = (precision, bool(recompute))
    usable, reserve = gpus.usable_bytes(kind), gpus.DEFAULT_RESERVED // 2 ** 20
    per = memory.max_batch_size(model, usable, n_gpus, optimizer, stage, *how) // n_gpus
    shard = "no sharding" if not stage else f"sharding {stage} ({memory.SHARDING_STAGES[stage]})"
    mode = (f"{precision}{' mixed' if _precision.is_mixed(precision) else ''}, "
            f"recomputation {'on' if recompute else 'off'}")
    summary = (f"ResNet-{depth}-like at {image_size} px on {n_gpus} x {kind.name} "
               f"({kind.memory_gib:.0f} GiB, {reserve} MiB reserved), {optimizer}, {shard}, "
               f"{mode}: at most {per} images per GPU, a global batch of {n_gpus * per} "
               "(predicted)")
    sizes = sorted({1, max(1, per // 4), max(1, per // 2), max(1, per)})
    fig = plots.memory_breakdown(
        {n: memory.estimate(model, n, optimizer, stage, n_gpus, *how) for n in sizes},
        xlabel="images per GPU (the split)",
        capacity=(usable, f"{kind.name} memory less {reserve} MiB reserved"),
        title=f"One of {n_gpus} {kind.name}s, ResNet-{depth}-like at {image_size} px, "
              f"sharding {stage or 'none'}, {mode} (predicted)",
        source=f"predicted by mgpu_lab.predict.memory from the graph;\n"
               f"GPU memory: {kind.source}")
    return summary, fig


@contextlib.contextmanager
def untracked():
    """Figures made inside are not tracked by the inline backend (pyplot's interactive
    mode off; not ``plt.ioff()``, whose display-hook code needs an older IPython)."""
    was = matplotlib.is_interactive()
    matplotlib.interactive(False)
    try:
        yield
    finally:
        matplotlib.interactive(was)


def show_figure(fig):
    """Show ``fig`` as a PNG drawn here, then close it.

    Not ``plt.show()``: that shows every open figure, through the inline backend, whose
    PNG formatter a fresh kernel sets up only when it first shows a figure at the end of a
    cell; a widget's callback runs outside any cell, so there the figure could come out as
    the text "<Figure size 640x390 with 1 Axes>" or not as the figure just drawn."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    display(Image(data=buf.getvalue(), format="png"))


def limits_view(gpu="V100", image_size=224, depth=50, n_gpus=4, optimizer="momentum",
                sharding=0, precision="fp32", recompute=False):
    """Print the summary and show the figure (what the widget redraws on each change)."""
    with untracked():  # the inline backend neither tracks nor shows it: show_figure does
        summary, fig = limits_figure(gpu, image_size, depth, n_gpus, optimizer, sharding,
                                     precision, recompute)
    print(summary)
    show_figure(fig)


def batch_limits_widget():
    """Chapter 7's widget: each change builds the network's graph (a few seconds)."""
    controls = dict(
        gpu=widgets.Dropdown(options=gpus.gpu_names(), value="V100", description="GPU"),
        image_size=widgets.Dropdown(options=[32, 64, 96, 128, 160, 224], value=224,
                                    description="image px"),
        depth=widgets.Dropdown(options=sorted(models.RESNET_BLOCKS), value=50,
                               description="depth"),
        n_gpus=widgets.IntSlider(value=4, min=1, max=8, description="GPUs",
                                 continuous_update=False),
        optimizer=widgets.Dropdown(options=list(memory.OPTIMIZER_SLOTS), value="momentum",
                                   description="optimizer"),
        sharding=widgets.Dropdown(options=list(SHARDING_CHOICES), value=0,
                                  description="sharding"),
        precision=widgets.Dropdown(options=list(PRECISION_CHOICES), value="fp32",
                                   description="precision"),
        recompute=widgets.Checkbox(value=False, description="recompute activations"))
    return widgets.interact(limits_view, **controls)


def measure_view(model="cnn", batch_size=128, max_devices=2):
    """Measure speed-up and step breakdown on 1..max_devices simulated devices, and show them."""
    res = bench.run(model, devices=tuple(range(1, max_devices + 1)),
                    batch_sizes=(batch_size,), warmup=1, repeats=3, steps=2)
    display(tables.bench_table(res))  # HTML; a text table would be wider than the page
    with untracked():
        figs = [plots.speedup(res), plots.step_breakdown(res, batch_size=batch_size)]
    for fig in figs:
        show_figure(fig)


def throughput_widget():
    """Chapter 6's widget: press *Run Interact*; each run takes seconds to a minute."""
    return widgets.interact_manual(
        measure_view,
        model=widgets.Dropdown(options=sorted(presets.BENCH_MODELS), value="cnn",
                               description="network"),
        batch_size=widgets.Dropdown(options=[32, 64, 128, 256], value=128,
                                    description="batch"),
        max_devices=widgets.IntSlider(value=2, min=1, max=8, description="devices"))
