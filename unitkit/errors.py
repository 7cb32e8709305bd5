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


class DataError(TrainingError):
    """A dataset that cannot be built or read."""


class CheckpointError(UnitkitError):
    """A checkpoint that cannot be written or read, or that does not fit the model it is loaded into."""


class UnitkitWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints it as one yellow line."""
