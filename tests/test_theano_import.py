"""mgpu_lab/_theano.py: importing the library (and so Theano) does not start MPI.

theano.tensor.io imports mpi4py.MPI when it can, and that import runs MPI_Init, which
outside mpiexec sometimes ended a kernel with exit() (the hub test's student kernels).
The library keeps Theano from importing it, and leaves mpi4py importable afterwards for
the MPI engine."""
import subprocess
import sys

CHECK = """
import sys
import mgpu_lab.presets, theano.tensor.io as tio
assert "mpi4py.MPI" not in sys.modules, "importing mgpu_lab started MPI"
assert tio.mpi_enabled is False
from mpi4py import MPI  # what the MPI engine does, in the ranks mpiexec starts
print(MPI.Is_initialized())
"""


def test_importing_the_library_does_not_start_mpi_and_mpi4py_still_imports():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"  # imported later, it starts MPI as it always did
