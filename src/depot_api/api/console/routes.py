"""Every console page, by method and path (paths under /console; {name} is one segment)."""

from __future__ import annotations

from depot_api.api.console.console import Route, route
from depot_api.api.console.project_builds import project_builds_page
from depot_api.api.console.projects import projects_page

ROUTES: list[Route] = [
    route("GET", "/", projects_page),
    # A project's builds
    route("GET", "/projects/{project_id}", project_builds_page),
]
