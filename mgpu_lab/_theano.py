"""The one place that imports Theano and sets its flags.

theano-pymc 1.1.2 reads ``THEANO_FLAGS`` once, at import time, so every other module
imports ``theano``/``T`` from here and never sets flags of its own.

* ``floatX=float32``: the book's tolerance statements are float32 ones.
* ``blas__ldflags=`` (empty): on numpy 1.23 Theano's BLAS probe fails and the import
  breaks unless the flag is set; empty makes Theano call numpy's own BLAS through the
  numpy C-API (so ``OPENBLAS_NUM_THREADS`` governs its threads).
* ``base_compiledir``: Theano's C-code cache. The user's ``~/.theano`` by default so a
  warm cache survives fresh clones; ``MGPU_THEANO_DIR`` moves it (e.g. project-local).
"""
import logging
import os
import warnings

__all__ = ["theano", "T", "floatX", "FLAGS"]

FLAGS = {"floatX": "float32", "blas__ldflags": "", "device": "cpu"}
if os.environ.get("MGPU_THEANO_DIR"):
    FLAGS["base_compiledir"] = os.environ["MGPU_THEANO_DIR"]


def _merged_flags(existing):
    """Our flags first, the user's THEANO_FLAGS after them (Theano lets the last win)."""
    ours = ",".join(f"{k}={v}" for k, v in FLAGS.items())
    return f"{ours},{existing}" if existing else ours


os.environ["THEANO_FLAGS"] = _merged_flags(os.environ.get("THEANO_FLAGS", ""))

# "Using NumPy C-API based implementation for BLAS functions" is the expected set-up here.
logging.getLogger("theano.tensor.blas").setLevel(logging.ERROR)

with warnings.catch_warnings():
    # theano-pymc warns about scipy/numpy deprecations on import; they are not ours.
    warnings.simplefilter("ignore")
    import theano  # noqa: E402
    import theano.tensor as T  # noqa: E402

floatX = theano.config.floatX
