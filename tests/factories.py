"""Making things the tests need, through the domain of an app or a store."""

from __future__ import annotations

from depot_api.domain.principal import Principal
from depot_api.wiring import Domain


async def new_project(domain: Domain, admin: Principal, name: str = "app") -> str:
    """A project with default settings in the admin's organization; returns its ID."""
    project = await domain.projects.create(
        admin,
        name=name,
        region_id="us-east-1",
        organization_id=None,
        cache_policy=None,
        hardware=None,
    )
    return project.id
