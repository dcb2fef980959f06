"""Waking builds that wait for a machine, without each of them polling the database.

One poller per process reads the machines' change stamp while anyone waits, and wakes every
waiter when it moves; machine changes made by other processes are seen within one poll
interval. A thousand waiting streams cost one small query per interval, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable


class ChangeFeed:
    def __init__(self, read_stamp: Callable[[], Awaitable[Hashable]], *, interval: float) -> None:
        self._read_stamp = read_stamp
        self._interval = interval
        # Set (and replaced by a fresh one) whenever the stamp moves: no lock to re-acquire.
        self._changed = asyncio.Event()
        self._waiters = 0
        self._poller: asyncio.Task[None] | None = None
        self._stamp: Hashable | None = None
        # Counts the moves seen: a waiter that was busy (not waiting) when the stamp moved
        # still learns of it, by comparing with the generation it saw before its work.
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    async def wait(self, seconds: float, seen: int) -> bool:
        """Wait until the stamp has moved since generation `seen` (True), or the seconds pass
        (False). Returns at once if it already has."""
        if self._generation != seen:
            return True
        self._waiters += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), seconds)
        except TimeoutError:
            return False
        finally:
            self._waiters -= 1
        return True

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll(self) -> None:
        while self._waiters > 0:
            stamp: Hashable | None
            try:
                stamp = await self._read_stamp()
            except Exception:  # a database hiccup: waiters time out and retry on their own
                stamp = self._stamp
            if stamp != self._stamp:
                first = self._stamp is None
                self._stamp = stamp
                if not first:
                    self._generation += 1
                    self._changed.set()
                    self._changed = asyncio.Event()
            await asyncio.sleep(self._interval)
