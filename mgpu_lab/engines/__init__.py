"""Layer 3: the data-parallel step. ``base`` holds the one protocol
(``Engine.step -> StepResult``, ``Timings``); ``serial``, ``local`` (DevicePool) and ``mpi``
follow it; ``pinning`` says what makes a process a device. Imports layers 1-2 only."""
