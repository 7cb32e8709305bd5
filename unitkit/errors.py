"""Failures with a message for the user. The CLI prints them as one red line: exit code 1 (recipe errors: 2)."""


class UnitkitError(Exception):
    """A runtime failure the user can act on (data, checkpoint, device, a diverging run)."""


class TrainingError(UnitkitError):
    """A run that cannot go on: a non-finite loss, out of memory, an unusable device."""


class DataError(TrainingError):
    """A dataset that cannot be built or read."""


class CheckpointError(UnitkitError):
    """A checkpoint that cannot be written or read, or that does not fit the model it is loaded into."""
