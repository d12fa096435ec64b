"""The teacher's guide quotes the class server's measurement (jupyter/hub_measure.json,
written by jupyter/hub_measure.py): its table and its arithmetic are that file's."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_guides_hub_table_is_the_measured_file():
    r = json.loads((ROOT / "jupyter" / "hub_measure.json").read_text())
    guide = (ROOT / "book" / "teachers_guide.md").read_text()
    rows = {"server start, first (spawn request to a ready JupyterLab)": f"{r['start_s']:.1f} s",
            "server start, again": f"{r['restart_s']:.1f} s",
            "memory of an idle server (PSS, all the student's processes)":
                f"{r['pss_idle_server_MiB']} MiB",
            "after chapter 3's first two cells (the model, θ)":
                f"{r['pss_after_first_cells_cold_MiB']} MiB",
            "peak while the whole of chapter 3 runs (3 device processes)":
                f"{r['pss_peak_whole_chapter_MiB']} MiB"}
    for what, value in rows.items():
        assert f"| {what} | {value} |" in guide, what
    gib = r["pss_peak_whole_chapter_MiB"] / 1024
    assert f"({gib:.3f} GiB): 62 / {gib:.3f} ≈ {62 / gib:.0f}" in guide
    assert f"({r['rest_of_chapter_s']:.0f} s for the rest" in guide
    assert r["measured"].startswith("2026-") and "hub_measure.py" in r["measured"]
