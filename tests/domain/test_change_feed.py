"""The change feed wakes waiters when the stamp moves, also those that were busy at the time."""

from __future__ import annotations

import asyncio

from depot_api.domain.change_feed import ChangeFeed


class Stamp:
    def __init__(self) -> None:
        self.value = 0

    async def read(self) -> int:
        return self.value


async def test_a_move_wakes_a_waiter() -> None:
    stamp = Stamp()
    feed = ChangeFeed(stamp.read, interval=0.01)
    try:
        seen = feed.generation
        waiting = asyncio.create_task(feed.wait(5, seen))
        await asyncio.sleep(0.05)  # the poller has read the first stamp
        stamp.value += 1
        assert await asyncio.wait_for(waiting, 1) is True
        assert feed.generation == seen + 1
    finally:
        await feed.close()


async def test_without_a_move_the_wait_times_out() -> None:
    feed = ChangeFeed(Stamp().read, interval=0.01)
    try:
        assert await feed.wait(0.1, feed.generation) is False
    finally:
        await feed.close()


async def test_a_move_while_a_waiter_was_busy_is_not_lost() -> None:
    """A waiter notes the generation, works (not waiting) while the stamp moves, and only then
    waits: it must return at once, not sleep until its timeout. (1 000 waiting GetEndpoint
    streams woke together, were busy retrying while the machine became ready, and slept
    through that change until their next periodic retry.)"""
    stamp = Stamp()
    feed = ChangeFeed(stamp.read, interval=0.01)
    try:
        other = asyncio.create_task(feed.wait(5, feed.generation))  # keeps the poller running
        await asyncio.sleep(0.05)
        seen = feed.generation
        stamp.value += 1  # while "busy"
        await asyncio.sleep(0.05)  # the poller notices; `other` wakes
        assert await other is True
        assert await asyncio.wait_for(feed.wait(5, seen), 0.5) is True
    finally:
        await feed.close()
