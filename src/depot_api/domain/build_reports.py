"""Progress reports a client streams while its build runs (the depot CLI's ReportStatusStream).

Each report is kept as it arrives, so a stream that ends in a reset instead of a clean close
loses nothing already sent. A build's reports are capped in total size: beyond the cap they
are dropped (and logged), never refused, because the CLI answers a refused stream by opening
a new one with the same batch.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from depot_api.domain.builds import Builds
from depot_api.domain.principal import Principal
from depot_api.models import Build, StatusReport
from depot_api.store.interface import BuildStore

log = logging.getLogger(__name__)

# Enough for the progress of a long multi-platform build (the CLI sends at most one batch a
# second); small enough that one build cannot fill the database.
MAX_REPORT_BYTES_PER_BUILD = 16 * 1024 * 1024


class BuildReports:
    def __init__(
        self,
        build_store: BuildStore,
        builds: Builds,
        *,
        now: Callable[[], datetime],
        max_bytes_per_build: int = MAX_REPORT_BYTES_PER_BUILD,
    ) -> None:
        self._build_store = build_store
        self._builds = builds
        self._now = now
        self._max_bytes = max_bytes_per_build

    def sink(self, principal: Principal) -> ReportSink:
        """A sink for one stream of reports; each build it names is checked once."""
        return ReportSink(lambda build_id: self._builds.get(principal, build_id), self._keep)

    async def list(self, principal: Principal, build_id: str) -> list[StatusReport]:
        build = await self._builds.get(principal, build_id)
        return await self._build_store.list_status_reports(build.id)

    async def _keep(self, build_id: str, report: bytes) -> bool:
        kept = await self._build_store.insert_status_report(
            build_id, self._now(), report, max_total_bytes=self._max_bytes
        )
        if not kept:
            log.warning(
                "build %s: progress report of %d bytes dropped: the build's reports reached "
                "%d bytes",
                build_id,
                len(report),
                self._max_bytes,
            )
        return kept


class ReportSink:
    def __init__(
        self,
        check: Callable[[str], Awaitable[Build]],
        keep: Callable[[str, bytes], Awaitable[bool]],
    ) -> None:
        self._check = check
        self._keep = keep
        self._reachable: set[str] = set()
        self._full: set[str] = set()

    async def keep(self, build_id: str, report: bytes) -> None:
        """Keep one report for the build; raises like Builds.get if the caller cannot reach
        it. Reports of a build over its cap are dropped."""
        if build_id not in self._reachable:
            await self._check(build_id)
            self._reachable.add(build_id)
        if build_id in self._full:
            return
        if not await self._keep(build_id, report):
            self._full.add(build_id)
