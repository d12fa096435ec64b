"""The one place that imports Theano and sets its flags.

theano-pymc 1.1.2 reads ``THEANO_FLAGS`` once, at import time, so every other module
imports ``theano``/``T`` from here and never sets flags of its own.

* ``floatX=float32``, the one dtype of the library: the book's tolerances are float32
  ones, the devices' shared buffers and MPI's ``MPI.FLOAT`` messages are float32. Every
  module spells it ``floatX`` (imported from here); another floatX in ``THEANO_FLAGS`` is
  refused at import with a clear error rather than half-honoured.
* ``blas__ldflags=`` (empty): on numpy 1.23 Theano's BLAS probe fails and the import
  breaks unless the flag is set; empty makes Theano call numpy's own BLAS through the
  numpy C-API (so ``OPENBLAS_NUM_THREADS`` governs its threads).
* ``base_compiledir``: Theano's C-code cache, ``~/.theano/mgpu_lab`` by default: in the
  user's home so that a warm cache survives fresh clones, and a directory of its own so
  that no other project's modules (or the thousands of stale entries an older mgpu_lab
  left, see :func:`_cache_external_ops_across_processes`) slow every process's start:
  Theano reads every entry's key when a process first compiles. ``MGPU_THEANO_DIR``
  moves it (e.g. project-local).
"""
import contextlib
import hashlib
import logging
import os
import sys
import warnings

__all__ = ["theano", "T", "floatX", "FLAGS"]

FLAGS = {"floatX": "float32", "blas__ldflags": "", "device": "cpu"}
FLAGS["base_compiledir"] = (os.environ.get("MGPU_THEANO_DIR")
                            or os.path.join(os.path.expanduser("~"), ".theano", "mgpu_lab"))


def _merged_flags(existing):
    """Our flags first, the user's THEANO_FLAGS after them (Theano lets the last win)."""
    ours = ",".join(f"{k}={v}" for k, v in FLAGS.items())
    return f"{ours},{existing}" if existing else ours


os.environ["THEANO_FLAGS"] = _merged_flags(os.environ.get("THEANO_FLAGS", ""))

# "Using NumPy C-API based implementation for BLAS functions" is the expected set-up here.
logging.getLogger("theano.tensor.blas").setLevel(logging.ERROR)


@contextlib.contextmanager
def _mpi_not_started():
    """Theano without ``mpi4py.MPI``: ``theano.tensor.io`` imports it if it can, and
    importing it starts MPI (``MPI_Init``) in every process that imports Theano: each
    kernel, each device worker. Started outside ``mpiexec``, MPICH's singleton start now
    and then fails and ends the process with ``exit()`` from inside that import: on a
    loaded 2-core machine, 4 runs of 6 of tests/test_hub.py lost a student's kernel in its
    first cell (strace: ``exit`` called from ``MPIR_Err_return_comm`` under mpi4py's
    bootstrap). The library never uses Theano's MPI ops; its MPI engine imports ``mpi4py.MPI``
    itself, in the ranks ``mpiexec`` starts. So the import is refused while Theano loads
    (``None`` in ``sys.modules``: an ImportError) and allowed again after."""
    blocked = "mpi4py.MPI" not in sys.modules
    if blocked:
        sys.modules["mpi4py.MPI"] = None
    try:
        yield
    finally:
        if blocked and sys.modules.get("mpi4py.MPI", 0) is None:
            del sys.modules["mpi4py.MPI"]


with warnings.catch_warnings(), _mpi_not_started():
    # theano-pymc warns about scipy/numpy deprecations on import; they are not ours.
    warnings.simplefilter("ignore")
    import theano  # noqa: E402
    import theano.tensor as T  # noqa: E402

floatX = "float32"
if theano.config.floatX != floatX:
    raise ImportError(f"mgpu_lab runs in float32 only, but THEANO_FLAGS sets floatX="
                      f"{theano.config.floatX}; drop floatX from THEANO_FLAGS")


def _version_ignoring_empty_props(linker, fgraph):
    """The C-cache version tuple of ``fgraph`` as Theano builds it, minus empty ``__props__``."""
    version = []
    for node in linker.schedule(fgraph):
        if hasattr(node.op, "c_code_cache_version_apply"):
            version.append(node.op.c_code_cache_version_apply(node))
        if getattr(node.op, "__props__", ()):
            version.append(node.op.__props__)
        for v in node.inputs + node.outputs:
            if hasattr(v.type, "c_code_cache_version"):
                version.append(v.type.c_code_cache_version())
    return tuple(version)


def _cache_ops_with_empty_props():
    """Work around a theano-pymc 1.1.2 bug that recompiles C code in every process.

    ``CLinker.cmodule_key_`` puts each op's ``__props__`` into the module's version tuple
    and calls the module *unversioned* if any entry is falsy. Ops without parameters
    (``Alloc``, ``Softmax``, ``ScalarFromTensor``, ...) have ``__props__ == ()``, so every
    graph holding one was rebuilt with g++ in every new process: ~2 s more for each
    simulated device's start. An empty ``__props__`` means "no parameters", not "no
    version"; ops whose ``c_code_cache_version`` is really empty stay unversioned.
    """
    from theano.link.c.basic import CLinker
    original = CLinker.cmodule_key_

    def cmodule_key_(self, fgraph, *args, **kwargs):
        key = original(self, fgraph, *args, **kwargs)
        if key is not None and key[0] == ():
            version = _version_ignoring_empty_props(self, fgraph)
            if version and all(version):
                return version, key[1]
        return key
    CLinker.cmodule_key_ = cmodule_key_


_cache_ops_with_empty_props()


def _stable_external_op_version(self):
    """``ExternalCOp.c_code_cache_version`` with a hash that is the same in every process."""
    code = "\0".join(self.func_codes).encode()
    version = (int.from_bytes(hashlib.sha256(code).digest()[:8], "big", signed=True),)
    if hasattr(self, "params_type"):
        version += (self.params_type.c_code_cache_version(),)
    return version


def _cache_external_ops_across_processes():
    """Work around a second theano-pymc 1.1.2 bug that recompiles C code in every process.

    ``ExternalCOp`` (``DimShuffle`` and the other ops whose C code lives in a file) puts
    ``hash(tuple(self.func_codes))`` in its cache version. Python randomises ``str``
    hashes per process (PYTHONHASHSEED), so the version, and with it the module's key,
    differed in every process: each worker, kernel and MPI rank compiled the same
    ``DimShuffle`` again with g++ (~0.8 s) and added one more entry to the cache, whose
    every later start then read it back (``ModuleCache.refresh`` unpickles every key).
    A sha256 of the same code gives the same version everywhere.
    """
    from theano.graph.op import ExternalCOp
    ExternalCOp.c_code_cache_version = _stable_external_op_version


_cache_external_ops_across_processes()
