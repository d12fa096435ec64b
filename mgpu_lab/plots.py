"""Matplotlib figures for the book. Every figure has a title, axis labels with units, and
says whether it is *measured* (on which machine) or *predicted* (by which model)."""
import matplotlib

matplotlib.use(matplotlib.get_backend() if "inline" in matplotlib.get_backend() else "Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["provenance", "loss_curves"]


def provenance(ax, text):
    """Write where a figure's numbers came from under its axes (measured or predicted)."""
    ax.annotate(text, xy=(0, 0), xycoords="axes fraction", xytext=(0, -38),
                textcoords="offset points", fontsize=7, color="0.35", va="top")


def loss_curves(histories, title="Training loss on 1..N devices", source="measured"):
    """Loss vs step, one line per run. ``histories``: {label: trainer.history}."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, hist in histories.items():
        ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], label=label, lw=1.6)
    ax.set(title=title, xlabel="training step", ylabel="mean cross-entropy loss (nats)")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    provenance(ax, source)
    fig.tight_layout()
    return fig
