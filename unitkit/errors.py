"""Failures with a message for the user. The CLI prints each as one red line and exits with its ``exit_code``.

Every error unitkit raises on purpose is a :class:`UnitkitError`; anything else reaching the CLI is a bug.
"""


class UnitkitError(Exception):
    """A runtime failure the user can act on (data, checkpoint, device, a diverging run)."""

    exit_code = 1


class UsageError(UnitkitError):
    """A mistake in what the user asked for: a recipe, an override, a command-line option."""

    exit_code = 2


class TrainingError(UnitkitError):
    """A run that cannot go on: a non-finite loss, out of memory, an unusable device."""


class StoppedBeforeCheckpoint(UnitkitError):
    """A signal that stopped a run replacing an older one (``--overwrite``) before its first checkpoint: nothing of
    the new run is kept, and the old one is put back."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"stopped by {signal_name} before this run's first checkpoint; nothing of it is kept")
        self.exit_code = 130 if signal_name == "SIGINT" else 143


class DataError(TrainingError):
    """A dataset that cannot be built or read."""


class CheckpointError(UnitkitError):
    """A checkpoint that cannot be written or read, or that does not fit the model it is loaded into."""


class UnitkitWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints it as one yellow line."""
