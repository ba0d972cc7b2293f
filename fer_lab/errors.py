"""Errors that carry a message a user can act on; the CLI prints them as one line.

Every error fer_lab raises on purpose is a `FerLabError`: `DataError` for a dataset file or row,
`ConfigError` for a parameter, params file or reference that cannot be used. Warnings go through
`warnings.warn` with a `FerLabWarning` subclass, so notebooks, the CLI and tests see them the same way.
"""


class FerLabError(Exception):
    """A problem with the user's input or environment, described without a traceback."""


class DataError(FerLabError):
    """A dataset file or row that cannot be read; the message names it and the problem."""


class ConfigError(FerLabError):
    """A parameter, params file or model reference that cannot be used; the message names it."""


class FerLabWarning(UserWarning):
    """Something a user should know that does not stop the work (the one warning channel)."""


class CorruptCacheWarning(FerLabWarning):
    """A cache file could not be used; it is discarded and rebuilt."""
