import numpy as np
import pytest

from mgpu_lab.optim import SGD, Adam, Momentum, linear_scaling_warmup, make_optimizer

W = [np.array([1.0, -2.0], np.float32)]
G = [np.array([0.5, 0.25], np.float32)]


def test_sgd_by_hand():
    np.testing.assert_allclose(SGD(0.1).update(W, G)[0], [0.95, -2.025])


def test_momentum_by_hand():
    opt = Momentum(0.1, momentum=0.9)
    w1 = opt.update(W, G)  # v = -0.1 g
    w2 = opt.update(w1, G)  # v = 0.9 * (-0.1 g) - 0.1 g = -0.19 g
    np.testing.assert_allclose(w2[0], W[0] - 0.29 * G[0], rtol=1e-6)


def test_adam_first_step_moves_by_lr_times_sign():
    new = Adam(0.01).update(W, G)[0]
    np.testing.assert_allclose(new, W[0] - 0.01 * np.sign(G[0]), rtol=1e-5)


def test_update_does_not_touch_its_inputs_and_state_round_trips():
    w = [a.copy() for a in W]
    opt = Adam(0.01)
    opt.update(w, G)
    np.testing.assert_array_equal(w[0], W[0])
    twin = Adam(0.01)
    twin.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(opt.update(W, G)[0], twin.update(W, G)[0])
    with pytest.raises(ValueError, match="'adam'"):
        SGD(0.1).load_state_dict(opt.state_dict())


def test_linear_scaling_with_warmup():
    lr = linear_scaling_warmup(0.1, base_batch=256, batch=1024, warmup_steps=4)
    assert [round(lr(s), 6) for s in range(6)] == [0.175, 0.25, 0.325, 0.4, 0.4, 0.4]


def test_make_optimizer_lists_known_names():
    assert isinstance(make_optimizer("momentum", 0.1), Momentum)
    with pytest.raises(ValueError, match="sgd, momentum, adam"):
        make_optimizer("rmsprop", 0.1)
