"""Every console page, by method and path (paths under /console; {name} is one segment)."""

from __future__ import annotations

from depot_api.api.console.console import Route, route
from depot_api.api.console.machines import machines_live, machines_page
from depot_api.api.console.projects import projects_page

ROUTES: list[Route] = [
    route("GET", "/", projects_page),
    # Machines
    route("GET", "/machines", machines_page),
    route("GET", "/machines/live", machines_live),
]
