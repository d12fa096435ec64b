"""mgpu_lab.predict.gpus: the catalogue of real GPUs and its look-up."""
import re

import pytest

from mgpu_lab.predict.gpus import BOOK_GPUS, CATALOGUE, GPU, get_gpu, gpu_names, usable_bytes

GiB, GB = 2 ** 30, 10 ** 9


def test_the_book_generations_are_there():
    assert set(BOOK_GPUS) <= set(CATALOGUE)
    assert {"K80", "P100", "V100", "A100", "H100"} <= set(gpu_names())


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_every_figure_is_sane_and_sourced(name):
    g = CATALOGUE[name]
    assert g.name == name
    assert 8 * GiB <= g.memory_bytes <= 96 * GiB and g.memory_bytes % GiB == 0
    assert 1e12 < g.fp32_flops < 1e14
    assert re.fullmatch(r"PCIe [345]\.0 x16", g.host_link)
    assert 10 * GB <= g.host_bw <= 64 * GB  # per direction: half the datasheet's both-ways figure
    assert g.peer_bw >= g.host_bw and g.peer_or_host_bw() == g.peer_bw
    assert g.peer_link.startswith("NVLink") == (g.peer_bw > g.host_bw)
    assert "datasheet" in g.source and re.search(r"\b20[12]\d\b", g.source)


def test_generations_get_faster_and_links_wider():
    gpus = [get_gpu(n) for n in BOOK_GPUS]  # K80, P100, V100, A100, H100: oldest first
    flops = [g.fp32_flops for g in gpus]
    assert flops == sorted(flops) and len(set(flops)) == len(flops)
    assert [g.host_bw for g in gpus] == sorted(g.host_bw for g in gpus)
    # PCIe per direction: gen 3 ~16 GB/s, each generation doubles it
    assert get_gpu("V100").host_bw == 16 * GB and get_gpu("H100").host_bw == 4 * 16 * GB


def test_lookup_ignores_case_and_returns_gpu_objects_unchanged():
    assert get_gpu("v100") is get_gpu(" V100 ") is CATALOGUE["V100"]
    g = GPU("toy", GiB, 1e12, "PCIe 3.0 x16", 16 * GB, "none", None, "made up, 2024")
    assert get_gpu(g) is g
    assert g.peer_or_host_bw() == 16 * GB  # no peer path given: falls back to PCIe


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        get_gpu("X100")
    msg = str(err.value)
    assert "unknown GPU 'X100'" in msg
    assert all(n in msg for n in CATALOGUE)


def test_usable_bytes():
    assert usable_bytes("K80") == 12 * GiB - 512 * 2 ** 20
    assert usable_bytes("K80", reserved=0) == 12 * GiB
