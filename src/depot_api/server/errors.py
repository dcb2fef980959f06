"""The one error `depot-api serve` reports as a single line: it cannot start, or go on."""

from __future__ import annotations


class ServeError(Exception):
    """The server cannot start or go on; the message is one line for the user."""
