"""Layer 3: the data-parallel step. ``base`` holds the one protocol
(``Engine.step -> StepResult``, ``Timings``); ``update`` what travels with a step (the
optimizer's rule and state, flat vectors); ``strategies`` how gradients are combined, one
class each, written once on a link; ``serial``, ``local`` (DevicePool, with ``worker``:
its shared-memory transport) and ``mpi`` (its MPI transport) run them; ``pinning`` says
what makes a process a device. Imports layers 1-2 only."""
