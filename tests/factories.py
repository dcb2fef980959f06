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


async def new_build(domain: Domain, org_token: str) -> tuple[str, str]:
    """A running build in a new project of the token's organization; returns its ID and token."""
    admin = await domain.authenticator.authenticate(f"Bearer {org_token}")
    build, secret = await domain.builds.create(admin, await new_project(domain, admin))
    return build.id, secret
