"""mgpu_lab.figures.plots' figures for chapters 8 and 9: titles, axis labels with units, and
where the numbers came from (measured on what, or predicted by what)."""
import matplotlib
import pytest

matplotlib.use("Agg")

from mgpu_lab.figures import plots  # noqa: E402

MACHINE = {"cpu": "Test CPU", "cores": 2}


def _texts(fig):
    return " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def test_strategy_memory_stacks_counted_beside_predicted():
    d = {"parameters": 4096, "gradients": 4096, "optimizer": 8192}
    fig = plots.strategy_memory({"host": [dict(d, optimizer=0)] * 2, "ring": [d] * 2},
                                {"ring": [d] * 2}, source="counted on a test machine")
    ax = fig.axes[0]
    assert "(KiB)" in ax.get_ylabel() and "predicted" in ax.get_title()
    tops = sorted({round(p.get_y() + p.get_height(), 6) for p in ax.patches})
    assert tops[-1] == 16.0  # 16 KiB stacked: parameters + gradients + optimizer
    assert len(ax.patches) == 3 * (2 + 2 * 2)  # host: counted only; ring: counted + predicted
    assert "counted on a test machine" in _texts(fig)


def test_mem_bench_draws_measured_beside_predicted():
    MiB = 2 ** 20
    result = {"machine": MACHINE, "n_devices": 2, "n_params": 10 ** 6, "optimizer": "adam",
              "steps": 3, "rows": [{"strategy": s, "rss": [v * MiB, v * MiB]}
                                   for s, v in (("host", 300), ("ring", 380))],
              "measured": {"ring - host": 80 * MiB}, "predicted": {"ring - host": 78 * MiB}}
    fig = plots.mem_bench(result)
    assert all("(MiB)" in ax.get_ylabel() for ax in fig.axes)
    text = _texts(fig)
    assert "measured on Test CPU" in text and "predicted by mgpu_lab.predict.memory" in text
    heights = sorted(round(p.get_height()) for p in fig.axes[1].patches)
    assert heights == [78, 80]


def test_bytes_against_n_plots_each_series_in_kib():
    fig = plots.bytes_against_n((2, 4), {"ring": ([1024, 1536], "o-")}, "t",
                                "predicted by a formula")
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == [1.0, 1.5] and "(KiB)" in ax.get_ylabel()
    assert "predicted by a formula" in _texts(fig)


def test_predicted_breakdown_stacks_compute_transfers_and_host_per_labelled_bar():
    from mgpu_lab import models
    from mgpu_lab.predict import costmodel
    net = models.mlp(64, [32], 10)
    ps = {f"mlp\n{s}": costmodel.predict(net, "V100", 8, 256, strategy=s) for s in ("host", "ring")}
    fig = plots.step_breakdown(ps, title="two strategies (predicted)")
    ax = fig.axes[0]
    assert "(ms)" in ax.get_ylabel() and [t.get_text() for t in ax.get_xticklabels()] == list(ps)
    tops = [max(b.get_y() + b.get_height() for b in ax.patches
                if abs(b.get_x() + b.get_width() / 2 - i) < 0.01) for i in range(len(ps))]
    assert tops == pytest.approx([1e3 * p.step_s for p in ps.values()])  # bars add up to the step
    assert "predicted, not measured: mgpu_lab.predict.costmodel" in _texts(fig)
    assert "the host's stacking and update" in _texts(fig)  # host_s drawn apart from transfers
