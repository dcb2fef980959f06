"""Retrying without noise: waits that grow while something keeps failing, and a log that
speaks when a failure starts, changes or ends rather than at every attempt.

The agent retries several things forever (registering, heartbeats, starting its daemon); an
operator should read one line per problem, and a host should not spin on a problem that
only a person can fix.
"""

from __future__ import annotations

import logging


class Backoff:
    """Delays of first, then twice that, four times … seconds, at most cap; reset() starts over."""

    def __init__(self, first: float, cap: float) -> None:
        if not 0 < first <= cap:
            raise ValueError("a backoff needs 0 < first <= cap")
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the one after."""
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


class Trouble:
    """One thing that can go wrong again and again (the daemon, the server connection).

    report() logs a warning when the problem starts or becomes a different problem, and only
    a debug line while the same problem repeats; clear() logs once that it is over.
    """

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self.current: str | None = None

    def report(self, problem: str, message: str) -> None:
        """problem names the state (compared with the last one); message is what is logged."""
        if problem == self.current:
            self._log.debug("%s", message)
            return
        self.current = problem
        self._log.warning("%s", message)

    def clear(self, message: str) -> None:
        if self.current is None:
            return
        self.current = None
        self._log.info("%s", message)
