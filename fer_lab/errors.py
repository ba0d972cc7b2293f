"""Errors that carry a message a user can act on; the CLI prints them as one line."""


class FerLabError(Exception):
    """A problem with the user's input or environment, described without a traceback."""


class DataError(FerLabError):
    """A dataset file or row that cannot be read; the message names it and the problem."""
