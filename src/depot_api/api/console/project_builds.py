"""A project's builds page: the project's facts, then its builds newest first, a page at a
time, optionally of one status, each with its duration and cache-hit ratio.

The status filter runs in the database (Builds.list), so every page is full whatever the mix
of statuses. A page token is a position in the listing, so the "Older builds" link carries
the filter with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from depot_api.api.console.web import Page, PageRequest, with_query
from depot_api.domain.builds import duration_seconds
from depot_api.domain.errors import InvalidArgument, NotFound
from depot_api.domain.ids import is_id, quoted
from depot_api.models import Build, BuildInsights, BuildStatus

BUILDS_PER_PAGE = 25
ALL_STATUSES = "all"
# The filter's choices, in the order the form offers them.
STATUS_CHOICES = (ALL_STATUSES, *(status.value for status in BuildStatus))


@dataclass(frozen=True, slots=True)
class BuildRow:
    """One line of the table: the build and what the page works out for it."""

    build: Build
    duration: float | None
    cache_hits: str


async def project_builds_page(request: PageRequest) -> Page:
    project_id = request.params["project_id"]
    if not is_id(project_id):
        # A malformed ID names no project either: the same page as a missing one.
        raise NotFound(f"project {quoted(project_id)} not found")
    # The project first: an unknown or unreachable project is the same 404 whatever the query.
    project = await request.domain.projects.get(request.principal, project_id)
    status = status_filter(request.query.get("status", ""))
    page_token = request.query.get("page", "")
    try:
        page = await request.domain.builds.list(
            request.principal, project.id, BUILDS_PER_PAGE, page_token or None, status
        )
    except InvalidArgument:
        # The one input left to refuse is the page token (the project ID passed above).
        raise InvalidArgument(
            "This page link is not one the console made (its page token is not understood). "
            "Start again from the project's newest builds."
        ) from None
    counters = await request.domain.insights.counters(page.items)
    rows = [
        BuildRow(build, duration_seconds(build), cache_hits(counters.get(build.id)))
        for build in page.items
    ]
    here = f"/console/projects/{project.id}"
    chosen = status.value if status is not None else ""
    return Page(
        "project_builds.html",
        {
            "project": project,
            "tab": "builds",
            "rows": rows,
            "status_choices": STATUS_CHOICES,
            "chosen_status": chosen or ALL_STATUSES,
            "older": (
                with_query(here, status=chosen, page=page.next_page_token)
                if page.next_page_token
                else ""
            ),
            # Past the first page: a way back to the newest builds, with the same filter.
            "newest": with_query(here, status=chosen) if page_token else "",
            "show_all": here if status is not None else "",
        },
    )


def status_filter(value: str) -> BuildStatus | None:
    """The status asked for; None for every status ("all", or no filter)."""
    if value in ("", ALL_STATUSES):
        return None
    try:
        return BuildStatus(value)
    except ValueError:
        raise InvalidArgument(
            f"Unknown build status {quoted(value)}: choose one of {', '.join(STATUS_CHOICES)}."
        ) from None


def cache_hits(insights: BuildInsights | None) -> str:
    """Cached steps of all steps, as "3 of 5 (60%)"; "—" for a build without steps. The
    percentage is rounded down, so 100% means every step came from cache."""
    if insights is None or insights.total_steps == 0:
        return "—"
    cached, total = insights.cached_steps, insights.total_steps
    return f"{cached} of {total} ({cached * 100 // total}%)"
