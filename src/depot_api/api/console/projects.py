"""The projects page: every project the signed-in token manages, its cache policy and its
most recent builds."""

from __future__ import annotations

from depot_api.api.console.web import Page, PageRequest

PROJECTS_PER_PAGE = 25
RECENT_BUILDS = 5


async def projects_page(request: PageRequest) -> Page:
    domain = request.domain
    page = await domain.projects.list(
        request.principal, PROJECTS_PER_PAGE, request.query.get("page") or None
    )
    recent = {
        project.id: (
            await domain.builds.list(request.principal, project.id, RECENT_BUILDS, None)
        ).items
        for project in page.items
    }
    return Page(
        "projects.html",
        {"projects": page.items, "recent": recent, "next_page": page.next_page_token},
    )
