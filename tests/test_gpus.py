"""mgpu_lab.predict.gpus: the catalogue of real GPUs and its look-up."""
import re

import pytest

from mgpu_lab.predict.gpus import (BOOK_GPUS, CATALOGUE, DEFAULT_RESERVED, GPU, get_gpu, gpu_names,
                                   usable_bytes)

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
    assert re.match(r"PCIe [345]\.0 x16", g.host_link)
    # per direction: half the datasheet's both-ways figure, shared by the GPUs of a board
    assert 10 * GB <= g.host_bw * g.gpus_per_board <= 64 * GB
    assert g.peer_bw >= g.host_bw and g.peer_or_host_bw() == g.peer_bw
    assert g.peer_link.startswith("NVLink") == (g.peer_bw > g.host_bw * g.gpus_per_board)
    assert "datasheet" in g.source and re.search(r"\b20[12]\d\b", g.source)


def test_generations_get_faster_and_links_wider():
    gpus = [get_gpu(n) for n in BOOK_GPUS]  # K80, P100, V100, A100, H100: oldest first
    flops = [g.fp32_flops for g in gpus]
    assert flops == sorted(flops) and len(set(flops)) == len(flops)
    assert [g.host_bw for g in gpus] == sorted(g.host_bw for g in gpus)
    # PCIe per direction: gen 3 ~16 GB/s, each generation doubles it
    assert get_gpu("V100").host_bw == 16 * GB and get_gpu("H100").host_bw == 4 * 16 * GB


def test_a_k80_transfer_has_its_boards_whole_link_in_the_serial_queue():
    k80 = get_gpu("K80")
    assert k80.gpus_per_board == 2 and "shared by the board's 2 GPUs" in k80.host_link
    # the host gather's transfers go one at a time: each has the x16 link, 16 GB/s per direction
    assert k80.host_bw == get_gpu("P100-PCIe").host_bw == 16 * GB
    assert k80.peer_bw == 16 * GB  # the ring ordered board by board: a whole x16 link per direction
    assert k80.base_fp32_flops == pytest.approx(2.8e12)  # 5.6 TFLOPS per board at base clock


def test_tensor_core_peaks():
    assert get_gpu("V100").peak() == get_gpu("V100").fp32_flops
    assert get_gpu("V100").peak("fp16") == 125e12
    assert get_gpu("A100").peak("tf32") == 156e12 and get_gpu("A100").peak("bf16") == 312e12
    assert get_gpu("H100").peak("tf32") == pytest.approx(494.5e12)  # 989 with sparsity / 2
    assert get_gpu("H100").peak("bf16") == pytest.approx(989.5e12)
    with pytest.raises(ValueError, match="K80 has no 'tf32' peak"):
        get_gpu("K80").peak("tf32")


def test_calibrations_are_single_gpu_resnet50_figures_with_sources():
    cals = {(g.name, p): c for g in CATALOGUE.values() for p, c in g.calibration.items()}
    assert {("K80", "fp32"), ("P100", "fp32"), ("V100", "fp32"), ("A100-80GB", "tf32")} <= set(cals)
    for (name, precision), c in cals.items():
        assert ", 1 GPU" in c.source and ("TensorFlow" in c.source or "NVIDIA" in c.source)
        g = get_gpu(name)
        # efficiency = images/s * FLOPs per image / peak, by hand
        assert c.efficiency(g.peak(precision)) == pytest.approx(
            c.images_per_s * c.flops / c.batch / g.peak(precision))
        assert 0.1 < c.efficiency(g.peak(precision)) < 0.7
    assert cals[("P100", "fp32")].images_per_s == 219 and cals[("K80", "fp32")].batch == 64
    with pytest.raises(ValueError, match="winograd"):
        cals[("K80", "fp32")].efficiency(1e12, winograd=0.5)


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
    assert DEFAULT_RESERVED == 512 * 2 ** 20
    assert usable_bytes("K80") == 12 * GiB - 512 * 2 ** 20
    assert usable_bytes("K80", reserved=0) == 12 * GiB


def test_one_ring_of_v100s_in_a_dgx1_gets_the_links_of_its_slowest_pair():
    v100 = get_gpu("V100")
    assert v100.peer_bw == 150 * GB  # all six NVLinks together, per direction (datasheet)
    assert v100.link_bw == 25 * GB  # one NVLink 2.0, per direction
    assert v100.ring_bw(2) == 50 * GB  # a pair joined by two links
    assert v100.ring_bw(4) == 25 * GB  # every ring of 4 in the cube-mesh has a one-link pair
    assert v100.ring_bw(8) == 50 * GB  # the two-link cycle through all 8
    assert v100.ring_bw(16) == v100.peer_bw  # past one DGX-1: the NVSwitch assumption
    assert get_gpu("V100-32GB").ring_bw(4) == 25 * GB
    # GPUs without a topology in the catalogue: one ring gets the peer figure
    assert get_gpu("A100").ring_bw(4) == get_gpu("A100").peer_bw
    assert get_gpu("K80").ring_bw(8) == get_gpu("K80").peer_bw == 16 * GB


def test_p100_one_ring_gets_one_nvlink():
    # DGX-1 with P100: four NVLinks per GPU to four different GPUs, none doubled, so one
    # ring of any 2 to 8 gets one link, 20 GB/s per direction; 80 is all four together
    p100 = get_gpu("P100")
    assert p100.peer_bw == 80 * GB and p100.link_bw == 20 * GB
    assert [p100.ring_bw(n) for n in range(2, 9)] == [20 * GB] * 7
    assert p100.ring_bw(16) == p100.peer_bw  # past one DGX-1: no topology known
    assert get_gpu("P100-PCIe").ring_bw(4) == get_gpu("P100-PCIe").peer_bw  # no NVLink
