"""Errors raised by the runtime for bad input, so callers can tell a user's mistake from a crash."""

from __future__ import annotations


class InputError(ValueError):
    """An image or prompt that cannot be segmented as given; the message names the problem."""
