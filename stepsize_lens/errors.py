"""Exception types shared across stepsize_lens.

`RunFileError` is the one exception that loading a run file raises for every kind of bad input
(missing, truncated, foreign, unsafe, newer format); the CLI turns it and `UserInputError` into
one line on stderr and exit code 2.
"""

from __future__ import annotations


class StepsizeLensError(Exception):
    """Base class of every error stepsize_lens raises on purpose."""


class UserInputError(StepsizeLensError, ValueError):
    """Bad input from the user (arguments, model spec, options); the CLI exits with code 2."""


class RunFileError(UserInputError):
    """A run file could not be read: missing, truncated, not a run, unsafe, or a newer format."""
