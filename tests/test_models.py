import pickle

import numpy as np
import pytest

from mgpu_lab import models
from mgpu_lab.models import ModelSpec, build


def test_cnn_shapes_and_spec_rebuild(cnn):
    assert cnn.param_shapes == [(8, 1, 3, 3), (8,), (8, 8, 3, 3), (8,), (512, 10), (10,)]
    assert cnn.n_params == sum(int(np.prod(s)) for s in cnn.param_shapes)
    twin = build(pickle.loads(pickle.dumps(cnn.spec)))  # what a worker does
    for a, b in zip(cnn.get_values(), twin.get_values()):
        np.testing.assert_array_equal(a, b)
    assert all(v.dtype == np.float32 for v in cnn.get_values())


def test_stage_plan_halves_224_px_down_to_7():
    assert models._stage_plan(224, 13) == [2, 2, 3, 3, 3]  # VGG-16's 13 convs
    assert models._stage_plan(8, 2) == [2]


def test_set_values_is_all_or_nothing(cnn):
    before = cnn.get_values()
    bad = [v + 1 for v in before]
    bad[-1] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"out.b needs shape \(10,\)"):
        cnn.set_values(bad)
    for a, b in zip(cnn.get_values(), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="6 parameters"):
        cnn.set_values(before[:2])


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="known models: .*cnn.*mlp"):
        build(ModelSpec.of("transformer"))


def test_logistic_gradient_matches_finite_differences():
    m = models.logistic(n_in=4, n_classes=3, seed=1)
    rng = np.random.RandomState(0)
    x, y = rng.rand(6, 4).astype(np.float32), np.array([0, 1, 2, 0, 1, 2], np.int32)
    W, b = m.get_values()
    g = m.gradient_function()(x, y)[0]
    f = m.loss_and_accuracy_function()
    eps = 1e-2
    for i, j in [(0, 0), (3, 2), (1, 1)]:
        Wp, Wm = W.copy(), W.copy()
        Wp[i, j] += eps
        Wm[i, j] -= eps
        m.set_values([Wp, b])
        lp = f(x, y)[0]
        m.set_values([Wm, b])
        lm = f(x, y)[0]
        assert abs((lp - lm) / (2 * eps) - g[i, j]) < 1e-3
