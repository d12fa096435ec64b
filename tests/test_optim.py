import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu_lab.optim import (SGD, Adam, Momentum, check_state, linear_scaling_warmup,
                            make_optimizer, state_dict)

W = [np.array([1.0, -2.0], np.float32)]
G = [np.array([0.5, 0.25], np.float32)]


def test_sgd_by_hand():
    new, state = SGD(0.1).rule(W, G, None, 0)
    np.testing.assert_allclose(new[0], [0.95, -2.025])
    assert state == [] and SGD.slots == 0


def test_momentum_by_hand():
    opt = Momentum(0.1, momentum=0.9)
    w1, s1 = opt.rule(W, G, None, 0)  # v = -0.1 g
    w2, s2 = opt.rule(w1, G, s1, 1)  # v = 0.9 * (-0.1 g) - 0.1 g = -0.19 g
    np.testing.assert_allclose(w2[0], W[0] - 0.29 * G[0], rtol=1e-6)
    np.testing.assert_allclose(s2[0][0], -0.19 * G[0], rtol=1e-6)


def test_adam_first_step_moves_by_lr_times_sign():
    new, (m, v) = Adam(0.01).rule(W, G, None, 0)
    np.testing.assert_allclose(new[0], W[0] - 0.01 * np.sign(G[0]), rtol=1e-5)
    assert Adam.slots == 2 and len(m) == len(v) == 1


def test_the_rule_is_pure():
    """Same inputs, same outputs; nothing written into its inputs; the optimizer keeps nothing."""
    opt = Adam(0.01)
    w, g = [a.copy() for a in W], [a.copy() for a in G]
    state = opt.init_state(w)
    a = opt.rule(w, g, state, 3)
    b = opt.rule(w, g, state, 3)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    np.testing.assert_array_equal(w[0], W[0])
    assert all(np.all(s[0] == 0) for s in state)  # the input state is untouched
    assert vars(opt).keys() == vars(Adam(0.01)).keys()  # no state grew on the object


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 7), st.sampled_from([SGD(0.1), Momentum(0.05), Adam(0.01)]),
       st.integers(0, 5))
def test_a_rule_on_shards_equals_the_rule_on_the_whole(n_shards, opt, t):
    """Elementwise rules: applied to N shards of the flat vector with each shard's state,
    they give the whole vector's result: what lets a sharded optimizer exist."""
    rng = np.random.RandomState(n_shards + t)
    w, g = rng.randn(23).astype(np.float32), rng.randn(23).astype(np.float32)
    state = [[rng.rand(23).astype(np.float32)] for _ in range(opt.slots)]
    whole, whole_state = opt.rule([w], [g], state, t)
    cuts = np.linspace(0, 23, n_shards + 1).astype(int)
    for a, b in zip(cuts[:-1], cuts[1:]):
        part, part_state = opt.rule([w[a:b]], [g[a:b]], [[s[0][a:b]] for s in state], t)
        np.testing.assert_array_equal(part[0], whole[0][a:b])
        for ps, ws in zip(part_state, whole_state):
            np.testing.assert_array_equal(ps[0], ws[0][a:b])


def test_a_state_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="adam keeps 2 state array"):
        Adam(0.01).rule(W, G, [[np.zeros(2, np.float32)]], 0)
    with pytest.raises(ValueError, match="1 parameters but 2 gradients"):
        SGD(0.1).rule(W, G + G, None, 0)
    assert check_state(Momentum(0.1), [[np.zeros(2)]], W)


def test_at_freezes_this_steps_rate_and_pickles():
    import pickle
    opt = Momentum(linear_scaling_warmup(0.1, 256, 1024, warmup_steps=4), momentum=0.8)
    frozen = pickle.loads(pickle.dumps(opt.at(2)))
    assert frozen.lr(0) == frozen.lr(99) == pytest.approx(0.325)
    a, _ = frozen.rule(W, G, None, 2)
    b, _ = opt.rule(W, G, None, 2)
    np.testing.assert_array_equal(a[0], b[0])


def test_state_dict_holds_name_t_and_copies():
    state = Momentum(0.1).init_state(W)
    d = state_dict(Momentum(0.1), state, 7)
    assert d["name"] == "momentum" and d["t"] == 7
    d["state"][0][0][0] = 5
    assert state[0][0][0] == 0


def test_linear_scaling_with_warmup():
    lr = linear_scaling_warmup(0.1, base_batch=256, batch=1024, warmup_steps=4)
    assert [round(lr(s), 6) for s in range(6)] == [0.175, 0.25, 0.325, 0.4, 0.4, 0.4]


def test_make_optimizer_lists_known_names():
    assert isinstance(make_optimizer("momentum", 0.1), Momentum)
    with pytest.raises(ValueError, match="sgd, momentum, adam"):
        make_optimizer("rmsprop", 0.1)
