"""Step 4: update rules on host arrays, and learning-rate schedules.

An optimizer's ``update(values, grads)`` computes every new parameter and every new
state array first and only then commits its state, returning new arrays: the caller's
arrays are never modified, so a failed step leaves nothing half-updated.
"""
import numpy as np

from ._theano import floatX

__all__ = ["SGD", "Momentum", "Adam", "make_optimizer", "constant", "linear_scaling_warmup"]


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


class _Optimizer:
    name = "?"

    def __init__(self, lr):
        self.schedule = lr if callable(lr) else constant(float(lr))
        self.t = 0  # number of updates applied so far
        self.state = []  # list of lists of arrays, one list per state slot

    def update(self, values, grads):
        if len(values) != len(grads):
            raise ValueError(f"{len(values)} parameters but {len(grads)} gradients")
        lr = self.schedule(self.t)
        new_values, new_state = self._rule(lr, values, grads)
        self.state, self.t = new_state, self.t + 1  # commit only once all is computed
        return [np.asarray(v, dtype=floatX) for v in new_values]

    def state_dict(self):
        return {"name": self.name, "t": self.t,
                "state": [[np.array(a) for a in slot] for slot in self.state]}

    def load_state_dict(self, d):
        if d["name"] != self.name:
            raise ValueError(f"optimizer state is for {d['name']!r}, this optimizer is {self.name!r}")
        self.t, self.state = int(d["t"]), [[np.array(a) for a in slot] for slot in d["state"]]

    def _zeros_like(self, values):
        return [np.zeros_like(v, dtype=floatX) for v in values]


class SGD(_Optimizer):
    """w <- w - lr * g"""
    name = "sgd"

    def _rule(self, lr, values, grads):
        return [w - lr * g for w, g in zip(values, grads)], []


class Momentum(_Optimizer):
    """v <- mu * v - lr * g;  w <- w + v  (heavy ball)."""
    name = "momentum"

    def __init__(self, lr, momentum=0.9):
        super().__init__(lr)
        self.mu = momentum

    def _rule(self, lr, values, grads):
        vel = self.state[0] if self.state else self._zeros_like(values)
        vel = [self.mu * v - lr * g for v, g in zip(vel, grads)]
        return [w + v for w, v in zip(values, vel)], [vel]


class Adam(_Optimizer):
    """Kingma & Ba (2015), with bias-corrected first and second moments."""
    name = "adam"

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        self.b1, self.b2, self.eps = beta1, beta2, eps

    def _rule(self, lr, values, grads):
        m, v = self.state if self.state else (self._zeros_like(values), self._zeros_like(values))
        m = [self.b1 * a + (1 - self.b1) * g for a, g in zip(m, grads)]
        v = [self.b2 * a + (1 - self.b2) * g * g for a, g in zip(v, grads)]
        t = self.t + 1
        c1, c2 = 1 - self.b1 ** t, 1 - self.b2 ** t
        new = [w - lr * (a / c1) / (np.sqrt(b / c2) + self.eps) for w, a, b in zip(values, m, v)]
        return new, [m, v]


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def make_optimizer(name, lr, **kwargs):
    """An optimizer by name ('sgd', 'momentum', 'adam')."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](lr, **kwargs)
