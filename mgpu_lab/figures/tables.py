"""Tables of numbers for the book: an HTML table in the web page, in JupyterLab and in the
student edition (it scrolls sideways inside its own box when it is wider than the text,
instead of being cut off), and aligned text in a terminal or in print, never wider than
:data:`WIDTH` characters (a wide table is printed in blocks of columns).

    html_table(rows, columns, caption=...)   any list of dicts; units go in the headers
    bench_table(result)                      the measured table of mgpu_lab.measure.bench.run
    command_text(args)                       a command line folded to the page, "$ ... \\"
    mpi_bench_table(result)                  ... of mgpu_lab.measure.mpi_bench.run

The one way the book shows a table: a cell's last expression is the :class:`Table` (or
``display(table)``); ``print(table)`` gives the text.
"""
import html
import math
import numbers
import shlex
import textwrap
from dataclasses import dataclass

from ..engines.base import Timings

PHASES = Timings.phases()  # the step's phases, as the engines time them
from ..measure.machine import machine_label

__all__ = ["Column", "Table", "html_table", "bench_table", "mem_bench_table", "mpi_bench_table",
           "WIDTH", "wrap", "command_text"]

# The page is 88 characters wide: the book theme's text column (about 70 em at the body's
# size) holds about 88 characters of its monospace output font before a line is cut off
# or scrolls sideways. Every line of text the book prints keeps within it
# (tests/test_book.py counts the lines that do not).
WIDTH = 88


def wrap(text, width=WIDTH, indent="    "):
    """``text`` with every line wider than ``width`` folded at spaces, its continuation
    lines indented (a line with no space to fold at stays as it is)."""
    out = []
    for line in str(text).splitlines() or [""]:
        if len(line) <= width:
            out.append(line)
        else:
            out += textwrap.wrap(line, width, subsequent_indent=indent,
                                 break_long_words=False, break_on_hyphens=False) or [line]
    return "\n".join(out)


def command_text(args, width=WIDTH, prompt="$ "):
    """A command line as a reader would type it: ``prompt``, then ``args`` shell-quoted,
    folded with backslash continuations so that no line is wider than ``width``. It folds
    only before an option or a path, so an option stays beside its values."""
    groups = []
    for a in map(str, args):
        if not groups or a.startswith("-") or "/" in a:
            groups.append(shlex.quote(a))
        else:
            groups[-1] += " " + shlex.quote(a)
    lines = [prompt + groups[0]]
    for g in groups[1:]:
        if len(lines[-1]) + len(g) + 3 <= width:  # " " + g + " \\"
            lines[-1] += " " + g
        else:
            lines.append("    " + g)
    return " \\\n".join(lines)


@dataclass(frozen=True)
class Column:
    """One column: ``value(row)`` (a key of the row or a function of it), its header,
    ``fmt`` (a format spec such as ``",.1f"``, or a function value -> str) and the ``unit``
    of its numbers, shown in the header ("bytes", "ms", "MiB"), not in every cell."""

    value: object
    header: str
    fmt: object = ""
    unit: str = ""

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
    """Rows of text cells with a caption; shown as HTML by Jupyter, as text by print().
    ``units``: one per header ("" for none), shown under it."""

    headers: tuple
    cells: tuple  # one tuple of str per row
    caption: str = ""
    note: str = ""
    units: tuple = ()

    def header_texts(self):
        """Each header with its unit, as text: "parameters (bytes)"."""
        units = tuple(self.units) + ("",) * (len(self.headers) - len(self.units))
        return tuple(f"{h} ({u})" if u else h for h, u in zip(self.headers, units))

    def _repr_html_(self):
        esc = html.escape
        units = tuple(self.units) + ("",) * (len(self.headers) - len(self.units))
        head = "".join(
            f'<th style="text-align:right">{esc(h)}'
            + (f'<br><span class="mgpu-unit" style="font-weight:normal">({esc(u)})</span>'
               if u else "") + "</th>" for h, u in zip(self.headers, units))
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
        return self.text()

    def text(self, width=WIDTH):
        """Aligned text within ``width`` columns: caption and note folded; a table wider
        than that is printed in blocks of columns, each led by the first (the row's key)."""
        headers = self.header_texts()
        widths = [max(len(h), *(len(r[i]) for r in self.cells)) if self.cells else len(h)
                  for i, h in enumerate(headers)]
        blocks, block = [], [0]
        for i in range(1, len(headers)):  # greedy: as many columns as fit beside the key
            if block != [0] and sum(widths[j] + 2 for j in block) + widths[i] > width:
                blocks.append(block)
                block = [0]
            block.append(i)
        blocks.append(block)
        out = [wrap(self.caption, width, "")] if self.caption else []
        for k, cols in enumerate(blocks):
            line = lambda cells: "  ".join(cells[j].rjust(widths[j]) for j in cols)  # noqa: E731
            out += ([""] if k else []) + [line(headers)] + [line(r) for r in self.cells]
        return "\n".join(out + ([wrap(self.note, width, "")] if self.note else []))

    __repr__ = __str__


def html_table(rows, columns, caption="", note=""):
    """A :class:`Table` of ``rows`` (dicts); ``columns``: :class:`Column` or
    ``(value, header[, fmt])`` tuples."""
    cols = [c if isinstance(c, Column) else Column(*c) for c in columns]
    if not cols:
        raise ValueError("a table needs at least one column")
    cells = tuple(tuple(c.text(r) for c in cols) for r in rows)
    return Table(tuple(c.header for c in cols), cells, caption, note,
                 tuple(c.unit for c in cols))


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


def mem_bench_table(result):
    """A :func:`mgpu_lab.measure.mem_bench.run` result as two tables: each worker's resident
    memory per strategy, and the differences between strategies, measured beside the
    memory model's prediction."""
    MiB = 2 ** 20
    n, P = result["n_devices"], result["n_params"]
    per_device = [(lambda r, d=d: r["rss"][d] / MiB, f"device {d}", ".1f", "MiB")
                  for d in range(n)]
    rss = html_table(
        result["rows"], [("strategy", "strategy"), *per_device,
                         (lambda r: max(sum(h.values()) for h in r["held"]) / MiB,
                          "arrays counted", ".1f", "MiB")],
        caption=f"{machine_label(result['machine'])}: resident memory per worker (psutil), "
                f"{n} devices, MLP of {P:,} parameters (4P = {4 * P / MiB:.1f} MiB), "
                f"{result['optimizer']}, after {result['steps']} steps")
    diffs = [{"key": k, "measured": result["measured"][k], "predicted": p}
             for k, p in result["predicted"].items()]
    diff = html_table(
        diffs, [("key", "difference"),
                (lambda r: r["measured"] / MiB, "measured", ".1f", "MiB"),
                (lambda r: r["predicted"] / MiB, "predicted", ".1f", "MiB"),
                (lambda r: 100 * (r["measured"] / r["predicted"] - 1), "error", "+.1f", "%")],
        caption="Differences between strategies, means over devices: measured, and "
                "predicted by mgpu_lab.predict.memory")
    return rss, diff


def mpi_bench_table(result):
    """A :func:`mgpu_lab.measure.mpi_bench.run` result: one row per N, size and strategy,
    the measured communication (its host phases where the strategy has them), the cost
    model's prediction, the update and the whole step (medians, ms); the links measured by
    ping-pong in the note."""
    def ms(key, header, digits=2):  # a phase the strategy does not have shows as "-"
        return Column(lambda r: None if r.get(key) is None else 1e3 * r[key], header,
                      f".{digits}f", "ms")
    m = result["machine"]
    links = "; ".join(f"N={n}: latency {1e6 * v['latency_s']:.1f} us, bandwidth "
                      f"{v['bandwidth_Bps'] / 1e9:.2f} GB/s" for n, v in result["links"].items()
                      if v)
    return html_table(
        result["rows"],
        [("n_ranks", "N"), Column(lambda r: r["bytes"] / 1e6, "gradient", ".1f", "MB"),
         ("strategy", "strategy"), ms("comm_s", "comm"),
         ms("predicted_comm_s", "comm predicted"), ms("comm_gather_s", "gather"),
         ms("comm_stack_s", "stack"), ms("comm_broadcast_s", "bcast"),
         ms("step_update_s", "update"), ms("step_s", "step", 1)],
        caption=f"{machine_label(m)}: MPIEngine training steps on N ranks (ranks > "
                f"{m['cores']} cores are oversubscribed), medians",
        note=f"comm predicted: the cost model (mgpu_lab.predict.algorithms) with the link "
             f"measured by ping-pong ({links}) and the measured memory bandwidth")
