"""The errors the engines raise, each carrying what a user needs to act on it."""

__all__ = ["DeviceOutOfMemory", "DeviceError", "WorkerDied", "EngineClosed",
           "NonFiniteGradient", "CheckpointError", "DeviceStateLost"]


class DeviceOutOfMemory(MemoryError):
    """A split needs more memory than its device has; raised before any work starts."""

    def __init__(self, device, needed, memory_bytes, largest_fit, split_size):
        self.device, self.needed, self.memory_bytes = device, needed, memory_bytes
        self.largest_fit, self.split_size = largest_fit, split_size
        hint = (f"the largest split that fits is {largest_fit} samples" if largest_fit
                else "not even one sample fits: use a device with more memory or a smaller model")
        super().__init__(
            f"device {device}: a split of {split_size} samples needs {needed:,} bytes "
            f"({needed / 2**20:.1f} MiB) but the device holds {memory_bytes:,} bytes "
            f"({memory_bytes / 2**20:.1f} MiB); {hint}")


class DeviceError(RuntimeError):
    """An exception inside a device's worker; the message carries the worker's traceback."""

    def __init__(self, device, remote_traceback):
        self.device, self.remote_traceback = device, remote_traceback
        super().__init__(f"device {device} raised an exception:\n{remote_traceback}")


class WorkerDied(RuntimeError):
    """A device's worker process ended in the middle of its work (killed, crashed)."""

    def __init__(self, device, exitcode):
        self.device, self.exitcode = device, exitcode
        how = f"killed by signal {-exitcode}" if exitcode and exitcode < 0 else f"exit code {exitcode}"
        super().__init__(f"device {device}'s worker process died ({how}); the pool was shut "
                         f"down and the parameters are those from before the step")


class EngineClosed(RuntimeError):
    """An engine was used after ``close()`` (or, for a pool, after a worker died)."""


class NonFiniteGradient(FloatingPointError):
    """A gradient came back NaN or infinite; the parameters were left untouched."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or from another model."""


class DeviceStateLost(RuntimeError):
    """The devices' parameters or optimizer state are no longer those of a whole step (a
    device died with its state, or an update overflowed part-way); the trainer restarts
    from its last consolidated snapshot. ``steps_lost``: the steps since that snapshot."""

    def __init__(self, message, steps_lost=None):
        self.steps_lost = steps_lost
        super().__init__(message)
