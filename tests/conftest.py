"""Shared fixtures (few distinct Theano graphs: every test reuses these small models), and
the tiers: a test marked ``slow`` or ``mpi`` and no other tier is ``integration`` too (it
starts processes), so ``-m integration`` selects every process test; a test that uses a
fixture in ``_SLOW_FIXTURES`` is ``slow`` (tests/README.md)."""
import numpy as np
import pytest

from mgpu_lab import models
from mgpu_lab.data import load_digits

# float32 tolerances used throughout (stated once, here): the N-device gradient is a
# re-ordered sum of the same float32 terms, so it matches the one-device gradient to
# a few units in the last place of the largest terms.
GRAD_ATOL, GRAD_RTOL = 2e-6, 1e-4


_TIERS = ("integration", "book", "browser", "install")
# Fixtures that run a whole benchmark on pools (minutes on 2 busy cores): every test that
# uses one is slow, so make test leaves them to make test-all.
_SLOW_FIXTURES = {"short_run"}  # tests/test_bench.py


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        marks = {m.name for m in item.iter_markers()}
        if marks & {"slow", "mpi"} and not marks & set(_TIERS):
            item.add_marker(pytest.mark.integration)


def _needs_book(item):
    return "built_book" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected: only the tests that will run
def pytest_collection_finish(session):
    """If a selected test needs the built book, start its build now, in the background, and
    run the tests that need it last: the build (minutes of notebooks) overlaps every other
    test instead of adding to them (tests/README.md, "Tiers")."""
    items = session.items
    if any(_needs_book(i) for i in items) and not session.config.option.collectonly:
        items[:] = [i for i in items if not _needs_book(i)] + [i for i in items if _needs_book(i)]
        from bookbuild import start_in_background
        start_in_background()


@pytest.fixture(scope="session")
def digits():
    return load_digits()  # x (1797, 1, 8, 8) float32, y (1797,) int32


@pytest.fixture(scope="session")
def cnn():
    """The book's digits CNN (5,794 params); its gradient function is compiled once."""
    return models.cnn(image_size=8, channels=1, width=8, depth=2, seed=0)


@pytest.fixture(scope="session")
def cnn_grad(cnn):
    """f(x, y) -> [loss, *grads] at the CNN's *initial* parameters."""
    f = cnn.loss_and_gradients_function()
    init = cnn.get_values()

    def call(x, y):
        cnn.set_values(init)
        return [np.array(a) for a in f(x, y)]
    return call


def max_abs_diff(a_list, b_list):
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(a_list, b_list))


def pytest_sessionfinish(session):
    """A book build still running when the session ends (-x, Ctrl-C) is stopped with it."""
    import sys
    if "bookbuild" in sys.modules:
        sys.modules["bookbuild"].stop_background()
