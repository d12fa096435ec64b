"""Layer 4: measurements, each saved with its machine: ``bench`` (images/s on 1..N local
devices; ``baseline`` and ``cpuload`` serve it), ``mpi_bench`` (host gather against
all-reduce on MPI ranks), ``memory_check`` (the memory model against Theano's profiler and
the pool), ``soak`` (leaks over many steps), ``ring16`` (float16 on the ring's wire against
float32), ``critical_sweep`` (steps to a target per batch on the digits: the critical
batch and the noise scale), ``tta_bench`` (time to target on 1 and 2 local devices, beside
its prediction), ``machine`` (provenance). Imports layers 1-3."""
