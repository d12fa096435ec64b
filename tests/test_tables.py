"""mgpu_lab.figures.tables: one helper for every table of the book, HTML in the page (units
in the headers) and text within the page's width in print."""
from html.parser import HTMLParser

import pytest

from mgpu_lab.figures import tables
from mgpu_lab.figures.tables import WIDTH, Column, html_table

ROWS = [{"strategy": "host", "params": 23176, "opt": None},
        {"strategy": "sharded", "params": 23176, "opt": 15448}]


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.th, self.td, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag in ("th", "td"):
            self._in = tag
            getattr(self, tag).append("")

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            self._in = None

    def handle_data(self, data):
        if self._in:
            getattr(self, self._in)[-1] += data


def _cells(table):
    p = _Cells()
    p.feed(table._repr_html_())
    return p


def test_html_has_a_header_per_column_with_its_unit():
    t = html_table(ROWS, [("strategy", "strategy"), ("params", "parameters", ",", "bytes"),
                          Column("opt", "optimizer", ",", unit="bytes")],
                   caption="counted <by> the engine", note="a note")
    cells = _cells(t)
    assert cells.th == ["strategy", "parameters(bytes)", "optimizer(bytes)"]
    assert cells.td == ["host", "23,176", "-", "sharded", "23,176", "15,448"]
    html = t._repr_html_()
    assert "<thead>" in html and "counted &lt;by&gt; the engine" in html and "a note" in html
    assert "overflow-x:auto" in html  # a wide table scrolls in its own box, not the page


def test_text_shows_units_in_the_headers_and_aligns_columns():
    text = str(html_table(ROWS, [("strategy", "strategy"),
                                 ("params", "parameters", ",", "bytes")]))
    lines = text.splitlines()
    assert lines[0].split() == ["strategy", "parameters", "(bytes)"]
    assert lines[2].endswith("23,176") and len({len(l) for l in lines}) == 1


def test_a_wide_table_prints_in_blocks_within_the_page():
    cols = [("strategy", "strategy")] + [
        (lambda r, i=i: 1e6 * i, f"a long column header {i}", ",.0f", "bytes") for i in range(8)]
    t = html_table(ROWS, cols, caption="a caption " * 20, note="a note " * 30)
    text = str(t)
    assert max(len(l) for l in text.splitlines()) <= WIDTH
    assert text.count("strategy") >= 2  # every block is led by the key column
    for i in range(8):  # no column is lost
        assert f"a long column header {i} (bytes)" in text
    assert str(t) == t.text(WIDTH) and max(len(l) for l in t.text(60).splitlines()) <= 60


def test_missing_and_nan_values_are_marked_not_printed_as_nan():
    t = html_table([{"a": None}, {"a": float("nan")}], [("a", "a", ".1f")])
    assert t.cells == (("-",), ("—",))


def test_wrap_folds_long_lines_at_spaces_only():
    text = "word " * 40 + "\nshort"
    out = tables.wrap(text)
    assert max(len(l) for l in out.splitlines()) <= WIDTH
    assert out.splitlines()[-1] == "short" and " ".join(out.split()) == " ".join(text.split())
    assert tables.wrap("x" * 100) == "x" * 100  # nothing to fold at: left as it is


def test_a_table_needs_a_column():
    with pytest.raises(ValueError):
        html_table(ROWS, [])


def test_mpi_bench_table_fits_the_page_and_says_where_it_was_measured():
    row = {"n_ranks": 2, "bytes": 1e7, "strategy": "host", "comm_s": 0.0176,
           "predicted_comm_s": 0.0122, "comm_gather_s": 0.0077, "comm_stack_s": 0.0033,
           "comm_broadcast_s": 0.0058, "step_update_s": 0.0083, "step_s": 0.0555}
    ring = {k: v for k, v in row.items() if not k.startswith("comm_") or k == "comm_s"}
    result = {"machine": {"cpu": "Test CPU with a rather long name, 2.2 GHz", "cores": 2},
              "links": {"2": {"latency_s": 1.5e-6, "bandwidth_Bps": 2.81e9}},
              "rows": [row, dict(ring, strategy="ring")]}
    t = tables.mpi_bench_table(result)
    assert "ms" in t.units and "measured on Test CPU" in t.caption and "2.81 GB/s" in t.note
    assert t.cells[0][3] == "17.60" and t.cells[1][5] == "-"  # the ring has no gather
    assert max(len(line) for line in str(t).splitlines()) <= WIDTH


def test_mpi_bench_text_table_fits_the_page():
    from mgpu_lab.measure import mpi_bench
    row = {"n_ranks": 2, "bytes": 1e7, "strategy": "hierarchical", "comm_s": 0.0176,
           "predicted_comm_s": None, "step_update_s": 0.0083, "step_s": 0.0555}
    result = {"machine": {"cpu": "Intel(R) Xeon(R) Platinum 8480C Processor", "cores": 16},
              "links": {"2": {"latency_s": 1.5e-6, "bandwidth_Bps": 2.81e9}}, "rows": [row]}
    assert max(len(line) for line in mpi_bench.format_table(result).splitlines()) <= WIDTH


def test_a_command_line_folds_before_its_options_with_backslashes():
    import shlex
    args = (["/opt/some/long/path/bin/mpiexec", "-n", "2", "-bind-to", "core"]
            + [w for k in ("OPENBLAS", "OMP", "MKL") for w in ("-genv", f"{k}_NUM_THREADS", "1")]
            + ["/opt/some/long/path/bin/python", "-m", "mgpu_lab", "train", "--steps", "40",
               "--name", "two words"])
    text = tables.command_text(args)
    lines = text.splitlines()
    assert lines[0].startswith("$ /opt/") and len(lines) > 1
    assert all(len(line) <= WIDTH for line in lines)
    assert all(line.endswith(" \\") for line in lines[:-1])
    assert all(line.startswith("    -") or line.startswith("    /") for line in lines[1:])
    assert shlex.split(text[2:].replace(" \\\n", " ")) == args  # types back as the same command
    assert tables.command_text(["ls", "-l"]) == "$ ls -l"
