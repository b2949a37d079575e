"""User-facing errors.

Library code raises :class:`CovidsegError` (or a subclass) for anything a user can fix: a wrong
path, an unknown preset, a checkpoint from another program. The CLI turns it into a one-line
message and a non-zero exit instead of a traceback.
"""

from __future__ import annotations


class CovidsegError(Exception):
    """An error caused by input the user can correct; the message says what to do."""


class DataError(CovidsegError):
    """The data folder is missing, empty or not in the COVID-QU-Ex layout."""


class MaskEncodingError(DataError):
    """A mask file stored in a way the masks' rule (> 127 of 255) cannot read, such as 0 and 1: a
    property of the whole data set, so it stops the command instead of leaving one X-ray out."""


class ConfigError(CovidsegError, ValueError):
    """An unknown preset, key or an invalid value in the configuration."""


class CheckpointError(CovidsegError):
    """A run folder without a checkpoint, or a file that is not a covidseg checkpoint."""


class DivergedError(CovidsegError, FloatingPointError):
    """Training became non-finite (loss or weights): the run stops and is not marked done."""
