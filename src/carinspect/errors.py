"""The base of every error that means "bad input": the CLI prints these without a traceback."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names the input and what is wrong with it."""
