"""Step 4: update rules, pure functions of plain arrays; learning-rate schedules.

An optimizer is its hyper-parameters and nothing else. Its rule

    new_values, new_state = opt.rule(values, grads, state, t)

reads the parameters, their gradients, the state arrays and t (the number of updates
applied before this one) and returns fresh arrays: it never writes into its inputs and
keeps nothing. ``state`` is ``opt.slots`` lists of arrays shaped like the parameters
(momentum's velocity; Adam's two moments); ``None`` means "the first step" (zeros).
Because a rule is elementwise, it runs as well on a whole parameter list as on a shard
of one flat vector: that is what lets engines pass the state along, cut it into shards
and hand it back without ever opening an optimizer.
"""
import copy

import numpy as np

from ._theano import floatX

__all__ = ["SGD", "Momentum", "Adam", "OPTIMIZERS", "make_optimizer", "constant",
           "linear_scaling_warmup", "state_dict", "check_state"]


def constant(lr):
    return lambda step: lr


def linear_scaling_warmup(base_lr, base_batch, batch, warmup_steps=0):
    """Goyal et al. (2017): lr = base_lr * batch / base_batch, reached by a linear warm-up."""
    target = base_lr * batch / base_batch

    def schedule(step):
        if warmup_steps and step < warmup_steps:
            return base_lr + (target - base_lr) * (step + 1) / warmup_steps
        return target
    return schedule


class _FixedRate:
    """A schedule that is one number: picklable, unlike a lambda (see ``at``)."""

    def __init__(self, lr):
        self.lr = float(lr)

    def __call__(self, step):
        return self.lr


class _Optimizer:
    name, slots = "?", 0  # slots: state arrays per parameter

    def __init__(self, lr):
        self.schedule = lr if callable(lr) else constant(float(lr))

    def lr(self, t):
        """The learning rate of update number ``t`` (0 for the first)."""
        return float(self.schedule(t))

    def init_state(self, values):
        """The state before the first update: ``slots`` lists of zeros like ``values``."""
        return [[np.zeros_like(v, dtype=floatX) for v in values] for _ in range(self.slots)]

    def rule(self, values, grads, state, t):
        """``(new_values, new_state)`` of update number ``t``; inputs are left untouched."""
        if len(values) != len(grads):
            raise ValueError(f"{len(values)} parameters but {len(grads)} gradients")
        state = self.init_state(values) if state is None else check_state(self, state, values)
        new_values, new_state = self._rule(self.lr(t), values, grads, state, t)
        return [np.asarray(v, dtype=floatX) for v in new_values], new_state

    def at(self, t):
        """A copy whose schedule is update ``t``'s rate: picklable, for devices in other
        processes (a schedule may be a lambda). The rule is the same; only lr is frozen."""
        frozen = copy.copy(self)
        frozen.schedule = _FixedRate(self.lr(t))
        return frozen

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.schedule(0)!r})"


class SGD(_Optimizer):
    """w <- w - lr * g"""
    name, slots = "sgd", 0

    def _rule(self, lr, values, grads, state, t):
        return [w - lr * g for w, g in zip(values, grads)], []


class Momentum(_Optimizer):
    """v <- mu * v - lr * g;  w <- w + v  (heavy ball)."""
    name, slots = "momentum", 1

    def __init__(self, lr, momentum=0.9):
        super().__init__(lr)
        self.mu = momentum

    def _rule(self, lr, values, grads, state, t):
        vel = [self.mu * v - lr * g for v, g in zip(state[0], grads)]
        return [w + v for w, v in zip(values, vel)], [vel]


class Adam(_Optimizer):
    """Kingma & Ba (2015), with bias-corrected first and second moments."""
    name, slots = "adam", 2

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        self.b1, self.b2, self.eps = beta1, beta2, eps

    def _rule(self, lr, values, grads, state, t):
        m = [self.b1 * a + (1 - self.b1) * g for a, g in zip(state[0], grads)]
        v = [self.b2 * a + (1 - self.b2) * g * g for a, g in zip(state[1], grads)]
        c1, c2 = 1 - self.b1 ** (t + 1), 1 - self.b2 ** (t + 1)
        new = [w - lr * (a / c1) / (np.sqrt(b / c2) + self.eps) for w, a, b in zip(values, m, v)]
        return new, [m, v]


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def make_optimizer(name, lr, **kwargs):
    """An optimizer by name ('sgd', 'momentum', 'adam')."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](lr, **kwargs)


def check_state(opt, state, values):
    """``state`` as ``opt.rule`` needs it: ``opt.slots`` lists of arrays shaped like ``values``."""
    if len(state) != opt.slots or any(len(slot) != len(values) for slot in state):
        raise ValueError(f"{opt.name} keeps {opt.slots} state array(s) per parameter for "
                         f"{len(values)} parameters; got {len(state)} slot(s) of "
                         f"{[len(s) for s in state]} arrays")
    return state


def state_dict(opt, state, t):
    """What a checkpoint stores of an optimizer: its name, t and the state arrays."""
    return {"name": opt.name, "t": int(t), "state": [[np.array(a) for a in slot] for slot in state]}
