"""One build's page: its facts, its steps on a timeline with their first log lines, and its
share link; a step's whole log, page by page; and the live part a running build's page
fetches every two seconds (static/console.js) until the build ends.

The build is read with the signed-in principal (Builds.get), so the page reaches exactly the
builds the same token reaches through GetBuild: another organization's build is a 404, as
through the API.
"""

from __future__ import annotations

from depot_api.api.console.web import Fragment, Page, PageRequest, Redirect, with_query
from depot_api.api.timeline import timeline_of
from depot_api.domain.builds import duration_seconds
from depot_api.domain.errors import NotFound, PermissionDenied
from depot_api.domain.insights import BuildView, require_digest
from depot_api.models import Build, BuildStatus, Project

# Steps on the page, and the log lines shown under each (the rest on the step's log page).
STEPS_SHOWN = 1000
LINES_INLINE = 200
# Lines on one page of a step's log.
LOG_PAGE_LINES = 1000


def build_path(build_id: str) -> str:
    return f"/console/builds/{build_id}"


async def build_page(request: PageRequest) -> Page:
    return Page("build.html", await _page_context(request))


async def build_live(request: PageRequest) -> Fragment:
    """The page's live part, rendered again: no data-live-url on it once the build ended."""
    build = await request.domain.builds.get(request.principal, request.params["build_id"])
    return Fragment("build_live.html", await _live_context(request, build))


async def share_build(request: PageRequest) -> Page:
    """Share the build (or keep its link) and show the page with the link: ShareBuild again
    gives the same link, so sending this form again does no harm."""
    build_id = request.params["build_id"]
    secret = await request.domain.shares.share(request.principal, build_id)
    context = await _page_context(request, shared=True)
    context["share_link"] = request.public_url.share_link(secret)
    return Page("build.html", context)


async def stop_sharing_build(request: PageRequest) -> Redirect:
    build_id = request.params["build_id"]
    await request.domain.shares.stop(request.principal, build_id)
    return Redirect(with_query(build_path(build_id), sharing="stopped"))


async def step_log_page(request: PageRequest) -> Page:
    """A step's whole log, LOG_PAGE_LINES lines a page, in order."""
    domain = request.domain
    build = await domain.builds.get(request.principal, request.params["build_id"])
    digest = request.query.get("step", "")
    require_digest(digest, "step")
    step = await domain.insights.step_of(build, digest)
    token = request.query.get("page", "")
    log = await domain.insights.step_logs_of(build, digest, LOG_PAGE_LINES, token or None)
    return Page(
        "build_log.html",
        {
            "build": build,
            "project": await _project_of(request, build),
            "step": step,
            "lines": log.items,
            "first_page": not token,
            "next_page": log.next_page_token,
            "page_path": with_query(f"{build_path(build.id)}/logs", step=digest),
        },
    )


async def _page_context(request: PageRequest, *, shared: bool | None = None) -> dict[str, object]:
    """The page's context; `shared` when the caller already knows (it just shared the build),
    else read: whether the build is shared decides which share controls the page offers."""
    build = await request.domain.builds.get(request.principal, request.params["build_id"])
    if shared is None:
        shared = await request.domain.shares.is_shared(request.principal, build.id)
    return {
        **await _live_context(request, build),
        "project": await _project_of(request, build),
        "shared": shared,
        "sharing_stopped": request.query.get("sharing") == "stopped",
    }


async def _live_context(request: PageRequest, build: Build) -> dict[str, object]:
    view: BuildView = await request.domain.insights.view_of(build, STEPS_SHOWN, LINES_INLINE)
    running = build.status is BuildStatus.RUNNING
    start = build.started_us if build.started_us is not None else build.created_us
    return {
        "view": view,
        "build": build,
        "timeline": timeline_of(view),
        # While it runs: how long so far.
        "duration": (max(view.now_us - start, 0) / 1e6 if running else duration_seconds(build)),
        "live_url": f"{build_path(build.id)}/live" if running else "",
        "log_page": f"{build_path(build.id)}/logs",
    }


async def _project_of(request: PageRequest, build: Build) -> Project | None:
    """The build's project for its name, when this token may read projects (a build's reader
    may not be able to: then the page names the project by its ID)."""
    try:
        return await request.domain.projects.get(request.principal, build.project_id)
    except (NotFound, PermissionDenied):
        return None
