"""The project's exception types, so callers can tell bad input from bugs."""


class AttrsubError(Exception):
    """Base class for every error attrsub raises on purpose."""


class ConfigError(AttrsubError, ValueError):
    """Bad user input: an unknown name, a value out of range, an inconsistent config.

    Raised before any work starts; the message names the bad value and what is valid.
    """


class DataError(AttrsubError):
    """A dataset, weights file or adapter on disk is missing, corrupt or mismatched."""


class StorageError(AttrsubError, OSError):
    """Results could not be written (full disk, unwritable or vanished storage).

    Writes are atomic, so everything written before the failure is intact and readable.
    """


class DivergenceError(AttrsubError, FloatingPointError):
    """Training produced a NaN or infinite loss; the run stops at once instead of wasting time."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss is {loss} at step {step}: training diverged")
        self.step = step
        self.loss = loss
