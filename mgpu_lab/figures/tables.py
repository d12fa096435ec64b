"""Tables of numbers for the book: an HTML table in the web page (scrolls sideways inside
its own box when it is wider than the text, instead of being cut off) and aligned text in
a terminal or in print.

    html_table(rows, columns, caption=...)   any list of dicts
    bench_table(result)                      the measured table of mgpu_lab.measure.bench.run
"""
import html
import math
import numbers
from dataclasses import dataclass

from ..engines.base import Timings

PHASES = Timings.phases()  # the step's phases, as the engines time them
from ..measure.machine import machine_label

__all__ = ["Column", "Table", "html_table", "bench_table"]


@dataclass(frozen=True)
class Column:
    """One column: ``value(row)`` (a key of the row or a function of it), its header, and
    ``fmt`` (a format spec such as ``",.1f"``, or a function value -> str)."""

    value: object
    header: str
    fmt: object = ""

    def text(self, row):
        """The cell's text: "-" for a missing value, "—" for a number that is not one (a
        mean over no rows is NaN, which would otherwise print as "nan%")."""
        v = self.value(row) if callable(self.value) else row.get(self.value)
        if v is None:
            return "-"
        if isinstance(v, numbers.Real) and math.isnan(v):
            return "—"
        return self.fmt(v) if callable(self.fmt) else format(v, self.fmt)


@dataclass(frozen=True)
class Table:
    """Rows of text cells with a caption; shown as HTML by Jupyter, as text by print()."""

    headers: tuple
    cells: tuple  # one tuple of str per row
    caption: str = ""
    note: str = ""

    def _repr_html_(self):
        esc = html.escape
        head = "".join(f'<th style="text-align:right">{esc(h)}</th>' for h in self.headers)
        body = "".join("<tr>" + "".join(f'<td style="text-align:right">{esc(c)}</td>'
                                        for c in row) + "</tr>" for row in self.cells)
        caption = (f'<caption style="caption-side:top;text-align:left">{esc(self.caption)}'
                   "</caption>" if self.caption else "")
        note = (f'<p style="font-size:0.85em;margin-top:0.3em">{esc(self.note)}</p>'
                if self.note else "")
        # the box scrolls sideways, the page does not: wide tables stay readable
        return (f'<div class="mgpu-table" style="overflow-x:auto;max-width:100%">'
                f'<table class="table" style="width:auto;font-size:0.9em;'
                f'font-variant-numeric:tabular-nums">{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>{note}</div>")

    def __str__(self):
        widths = [max(len(h), *(len(r[i]) for r in self.cells)) if self.cells else len(h)
                  for i, h in enumerate(self.headers)]
        line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
        out = [self.caption] if self.caption else []
        out += [line(self.headers)] + [line(r) for r in self.cells]
        return "\n".join(out + ([self.note] if self.note else []))

    __repr__ = __str__


def html_table(rows, columns, caption="", note=""):
    """A :class:`Table` of ``rows`` (dicts); ``columns``: :class:`Column` or
    ``(value, header[, fmt])`` tuples."""
    cols = [c if isinstance(c, Column) else Column(*c) for c in columns]
    if not cols:
        raise ValueError("a table needs at least one column")
    cells = tuple(tuple(c.text(r) for c in cols) for r in rows)
    return Table(tuple(c.header for c in cols), cells, caption, note)


def _ms(*phases):
    return lambda r: 1e3 * sum(r[f"t_{p}"] for p in phases)


def bench_table(result):
    """The measured rows of a :func:`mgpu_lab.measure.bench.run` result (times: medians,
    ms per step), labelled with the machine they were measured on."""
    # the phases the host-gather step spends time in (split and exchange: ~0 there)
    phases = [p for p in ("compute", "fetch", "sync", "stack", "update") if p in PHASES]
    columns = [("n_devices", "N"), ("batch_size", "batch"),
               ("images_per_s", "images/s", ",.1f"),
               (lambda r: f"{r['images_per_s_min']:,.0f}-{r['images_per_s_max']:,.0f}",
                "images/s min-max"),
               ("speedup", "speed-up", ".2f"),
               ("predicted_speedup", "speed-up predicted (cost model)", ".2f"),
               (_ms("scatter", "set_params"), "ms: scatter + set_params", ".2f"),
               *[(_ms(p), f"ms: {p}", ".2f") for p in phases],
               (_ms("step"), "ms: step", ".2f"),
               (lambda r: f"{r['runs_kept']}/{r['runs']}", "runs kept"),
               ("foreign_load_cores", "other load (cores)", ".2f"),
               (lambda r: "yes" if r["oversubscribed"] else "no",
                "more devices than cores")]
    m = result["model"]
    caption = (f"{machine_label(result['machine'])}; model {m['spec']} "
               f"({m['n_params']:,} params); 1 BLAS thread per device")
    return html_table(result["rows"], columns, caption=caption,
                      note="times: medians over the timed steps; the predicted column is "
                           "mgpu_lab.predict.costmodel's, from this machine's measured "
                           "FLOP/s and copy bandwidth")
