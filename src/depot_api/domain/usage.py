"""Usage: builds, build seconds and saved seconds per project over a time window, and the
build cache each project's machines hold (from the agents' disk-usage reports)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from depot_api.domain.errors import InvalidArgument
from depot_api.domain.principal import Principal
from depot_api.domain.projects import Projects
from depot_api.models import Page, ProjectUsage
from depot_api.store.interface import UsageStore
from depot_api.times import to_micros

# A window with no start covers this long before its end.
DEFAULT_WINDOW = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime


class Usage:
    def __init__(
        self, usage_store: UsageStore, projects: Projects, *, now: Callable[[], datetime]
    ) -> None:
        self._store = usage_store
        self._projects = projects
        self._now = now

    def window(self, start: datetime | None, end: datetime | None) -> Window:
        """The window asked for: up to now when it has no end, DEFAULT_WINDOW long when it
        has no start."""
        end = end or self._now()
        start = start or end - DEFAULT_WINDOW
        if start >= end:
            raise InvalidArgument(
                f"start_at ({start.isoformat()}) must be before end_at ({end.isoformat()})"
            )
        return Window(start, end)

    async def of_project(
        self, principal: Principal, project_id: str, window: Window
    ) -> ProjectUsage:
        project = await self._projects.get_managed(principal, project_id, "read usage")
        (usage,) = await self._figures([project.id], window)
        return usage

    async def of_projects(
        self,
        principal: Principal,
        window: Window,
        page_size: int | None,
        page_token: str | None,
    ) -> Page[ProjectUsage]:
        """The usage of the caller's organizations' projects, a page of projects at a time
        (in ListProjects' order, with its page tokens)."""
        projects = await self._projects.list(principal, page_size, page_token)
        figures = await self._figures([p.id for p in projects.items], window)
        return Page(figures, projects.next_page_token)

    async def of_organizations(self, principal: Principal, window: Window) -> list[ProjectUsage]:
        """Every project of the caller's organizations (those that have builds or cache in
        the window first does not matter: all are listed, oldest first)."""
        principal.require_manager("read usage")
        ids = [p.id for p in await self._projects.buildable(principal)]
        return await self._figures(ids, window)

    async def _figures(self, project_ids: list[str], window: Window) -> list[ProjectUsage]:
        return await self._store.project_usage(
            project_ids, start_us=to_micros(window.start), end_us=to_micros(window.end)
        )
