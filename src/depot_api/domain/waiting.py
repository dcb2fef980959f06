"""The builds waiting for a BuildKit machine in this process, told to the log at info level.

Each server process knows only its own waits: GetEndpoint streams open on it, and builds whose
client (the depot CLI) polled it lately. It logs one line when a wait begins and, while any
build waits, a summary every 30 s: how many wait, for which platform, and the longest wait so
far. The lines carry build IDs and platforms only: never a token or a certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from depot_api.models import Platform

log = logging.getLogger(__name__)


@dataclass
class _Wait:
    platform: Platform
    since: datetime
    # When its client last polled; None for a stream, which ends explicitly.
    polled_at: datetime | None = None


class WaitingBuilds:
    def __init__(
        self,
        *,
        now: Callable[[], datetime],
        summary_every: float,
        poll_counts_for: timedelta,
    ) -> None:
        self._now = now
        self._summary_every = summary_every
        # A polled wait counts while its client polled this process within this long.
        self._poll_counts_for = poll_counts_for
        self._waits: dict[Hashable, _Wait] = {}
        self._reporter: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def stream(self, build_id: str, platform: Platform) -> Iterator[Callable[[], None]]:
        """A GetEndpoint stream: it waits from the first call of the function given (its
        first `pending`; a build refused at once never waited) to the end of the block."""
        key = object()  # a build may hold two streams at once (a client that retries)

        def waiting() -> None:
            if key not in self._waits:
                self._begin(key, _Wait(platform, self._now()), build_id)

        try:
            yield waiting
        finally:
            self._waits.pop(key, None)

    def polled(self, build_id: str, platform: Platform, since: datetime, *, began: bool) -> None:
        """A polling client asked for a machine and was told to wait; its wait began at
        `since` (kept in the database: a poll may reach any process), with this poll if
        `began`, so the beginning is logged once, by the process that saw it."""
        now = self._now()
        key = (build_id, platform)
        wait = self._waits.get(key)
        if wait is not None:
            wait.polled_at = now
        elif began:
            self._begin(key, _Wait(platform, since, polled_at=now), build_id)
        else:
            self._waits[key] = _Wait(platform, since, polled_at=now)
            self._report_while_waiting()

    def poll_ended(self, build_id: str, platform: Platform) -> None:
        self._waits.pop((build_id, platform), None)

    def summary(self) -> str | None:
        """The summary line, or None when no build waits; polled waits whose client stopped
        asking are forgotten here."""
        now = self._now()
        for key, wait in list(self._waits.items()):
            if wait.polled_at is not None and now - wait.polled_at > self._poll_counts_for:
                del self._waits[key]
        if not self._waits:
            return None
        by_platform: dict[Platform, list[datetime]] = {}
        for wait in self._waits.values():
            by_platform.setdefault(wait.platform, []).append(wait.since)
        parts = [
            f"{platform.value}: {len(starts)}, "
            f"longest {max(0.0, (now - min(starts)).total_seconds()):.0f}s"
            for platform, starts in sorted(by_platform.items())
        ]
        return (
            f"{len(self._waits)} build(s) waiting for a BuildKit machine in this process "
            f"({'; '.join(parts)})"
        )

    async def close(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter

    def _begin(self, key: Hashable, wait: _Wait, build_id: str) -> None:
        self._waits[key] = wait
        log.info("build %s is waiting for a BuildKit machine (%s)", build_id, wait.platform.value)
        self._report_while_waiting()

    def _report_while_waiting(self) -> None:
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.create_task(self._report())

    async def _report(self) -> None:
        """Runs only while some build waits: it ends at the first look that finds none."""
        while True:
            await asyncio.sleep(self._summary_every)
            line = self.summary()
            if line is None:
                return
            log.info("%s", line)
