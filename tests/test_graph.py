"""mgpu_lab.predict.graph: shapes of every intermediate result and FLOPs, from the uncompiled graph."""
import numpy as np
import pytest

from mgpu_lab import models
from mgpu_lab.predict.graph import analyse, count_flops, training_graph


@pytest.fixture(scope="module")
def mlp():
    return models.mlp(n_in=64, hidden=(64,), seed=0)


@pytest.fixture(scope="module")
def tiny_resnet():
    """Stem with a stride-2 7x7 conv and a 3x3/2 pool, strided bottlenecks, projections."""
    return models.resnet_like(26, image_size=32, width=4, n_classes=10, seed=0)


def _op_shapes(info, op):
    return [n.out_shapes[0] for n in info.nodes if n.op == op and n.phase == "forward"]


def test_gradient_shapes_match_the_parameters(cnn):
    info = analyse(cnn, 16)
    loss, *grads = info.outputs
    assert info.shapes[loss] == ()
    assert [info.shapes[g] for g in grads] == cnn.param_shapes


def test_intermediate_shapes_of_a_cnn(cnn):
    # 16 * 8 * 8 * 8 = 8192 overflows an int8 shape constant: regression test.
    info = analyse(cnn, 16)
    assert _op_shapes(info, "AbstractConv2d") == [(16, 8, 8, 8), (16, 8, 8, 8)]
    assert _op_shapes(info, "Reshape") == [(16, 512)]  # the flatten head


def test_strides_pools_and_projections(tiny_resnet):
    info = analyse(tiny_resnet, 3)
    convs = _op_shapes(info, "AbstractConv2d")
    assert convs[0] == (3, 4, 16, 16)  # 7x7 stride-2 stem: 32 -> 16 px
    assert _op_shapes(info, "Pool") == [(3, 4, 8, 8)]  # 3x3 stride-2 pool, pad 1: 16 -> 8
    assert convs[-1] == (3, 128, 1, 1)  # last stage: 4 * 8 * width channels at 1 px
    assert [info.shapes[g] for g in info.outputs[1:]] == tiny_resnet.param_shapes


def test_shapes_scale_with_the_batch(cnn):
    small, big = analyse(cnn, 3), analyse(cnn, 6)
    for a, b in zip(small.nodes, big.nodes):
        for s, t in zip(a.out_shapes, b.out_shapes):
            if s and s[0] == 3 and s != t:
                assert t == (6,) + s[1:]


def test_execution_order_is_topological(cnn):
    outputs, nodes, forward = training_graph(cnn)
    seen = set()
    for node in nodes:
        assert all(v.owner is None or v.owner in seen for v in node.inputs)
        seen.add(node)
    assert {o.owner for o in outputs if o.owner} <= seen
    assert cnn.loss.owner in forward


def _phase_flops(info, ops):
    out = {"forward": 0, "backward": 0}
    for n in info.nodes:
        if n.op in ops:
            out[n.phase] += n.flops
    return out


def test_matrix_product_flops_are_exact(mlp):
    b = 32
    dots = _phase_flops(analyse(mlp, b), {"Dot"})
    assert dots["forward"] == 2 * b * 64 * 64 + 2 * b * 64 * 10
    # dW1 = x.T g1, dW2 = h.T g2, dh = g2 W2.T (no gradient w.r.t. the input x)
    assert dots["backward"] == 2 * b * (64 * 64 + 64 * 10 + 10 * 64)


def test_conv_flops_are_exact(cnn):
    b = 16
    per_layer = [2 * b * 8 * 8 * 8 * 1 * 9, 2 * b * 8 * 8 * 8 * 8 * 9]  # 2*N*Cout*H*W*Cin*9
    convs = _phase_flops(analyse(cnn, b), {"AbstractConv2d", "AbstractConv2d_gradWeights",
                                            "AbstractConv2d_gradInputs"})
    assert convs["forward"] == sum(per_layer)
    # both weight gradients, and the input gradient of layer 2 only
    assert convs["backward"] == sum(per_layer) + per_layer[1]


def test_count_flops_totals(cnn):
    f1, f4 = count_flops(cnn, 1), count_flops(cnn, 4)
    assert f1["total"] == f1["forward"] + f1["backward"]
    assert set(f1) == {"forward", "backward", "total"}
    assert all(isinstance(v, int) for v in f1.values())
    # backward ~ 2x forward for a conv net; every count grows ~linearly with the batch
    assert 1.5 < f4["backward"] / f4["forward"] < 3.0
    assert f4["total"] == pytest.approx(4 * f1["total"], rel=0.02)


def test_bad_batch_size(cnn):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        analyse(cnn, 0)


def test_flops_of_a_real_net_are_the_published_ones():
    """The VGG-16 preset has VGG-16's parameters, and its forward pass the ~15.5 G
    multiply-adds at 224 px that FLOP counters report for VGG-16: 31 GFLOP, plus the
    elementwise ops."""
    vgg = models.vgg16_like(image_size=224, width=64, fc=(4096, 4096))
    assert vgg.n_params == 138_357_544  # VGG-16's parameter count (configuration D)
    f = analyse(vgg, 1)
    mac = _phase_flops(f, {"AbstractConv2d", "Dot"})["forward"] / 2
    assert mac == pytest.approx(15.47e9, rel=0.01)
    assert np.isclose(count_flops(vgg, 1)["forward"], 2 * mac, rtol=0.02)
