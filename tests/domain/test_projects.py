from __future__ import annotations

from typing import Any

import pytest

from depot_api.domain.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from depot_api.domain.principal import Principal
from depot_api.domain.projects import CachePolicyInput
from depot_api.models import CachePolicy, Hardware, Project, TokenKind
from depot_api.wiring import Domain


async def create(domain: Domain, admin: Principal, **kwargs: Any) -> Project:
    fields: dict[str, Any] = {
        "name": "app",
        "region_id": "us-east-1",
        "organization_id": None,
        "cache_policy": None,
        "hardware": None,
    }
    fields.update(kwargs)
    return await domain.projects.create(admin, **fields)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (None, CachePolicy(keep_gb=50, keep_days=14)),
        (CachePolicyInput(keep_bytes=50 * 2**30, keep_days=14), CachePolicy(50, 14, 50 * 2**30)),
        (CachePolicyInput(keep_bytes=1, keep_days=0), CachePolicy(1, 0, 1)),
        (CachePolicyInput(keep_gb=7, keep_bytes=2**40), CachePolicy(7, 0, 2**40)),
        (CachePolicyInput(keep_days=3), CachePolicy(50, 3, None)),
        (CachePolicyInput(keep_bytes=0), CachePolicy(50, 0, 0)),
    ],
)
async def test_cache_policy(
    domain: Domain, admin: Principal, given: CachePolicyInput | None, stored: CachePolicy
) -> None:
    project = await create(domain, admin, cache_policy=given)
    assert project.cache_policy == stored


async def test_hardware_is_kept(domain: Domain, admin: Principal) -> None:
    project = await create(domain, admin, hardware=int(Hardware.HW_32X64))
    assert project.hardware is Hardware.HW_32X64


async def test_names_are_unique_per_organization_only(domain: Domain, admin: Principal) -> None:
    await create(domain, admin, name="web")
    with pytest.raises(AlreadyExists):
        await create(domain, admin, name="web")
    other = await domain.organizations.create("other")
    other_admin = Principal("o", TokenKind.ORG, frozenset({other.id}))
    await create(domain, other_admin, name="web")


async def test_a_deleted_name_can_be_used_again(domain: Domain, admin: Principal) -> None:
    first = await create(domain, admin, name="web")
    await domain.projects.delete(admin, first.id)
    second = await create(domain, admin, name="web")
    assert second.id != first.id
    with pytest.raises(NotFound):
        await domain.projects.get(admin, first.id)


async def test_a_user_in_several_organizations_names_one(domain: Domain) -> None:
    a = await domain.organizations.create("a")
    b = await domain.organizations.create("b")
    user = Principal("u", TokenKind.USER, frozenset({a.id, b.id}), user_id="u")
    with pytest.raises(InvalidArgument, match="organization_id is required"):
        await domain.projects.create(
            user,
            name="x",
            region_id="us-east-1",
            organization_id=None,
            cache_policy=None,
            hardware=None,
        )
    project = await domain.projects.create(
        user,
        name="x",
        region_id="us-east-1",
        organization_id=b.id,
        cache_policy=None,
        hardware=None,
    )
    assert project.org_id == b.id


async def test_reset_counts_generations(domain: Domain, admin: Principal) -> None:
    project = await create(domain, admin)
    assert await domain.projects.reset(admin, project.id) == 1
    assert await domain.projects.reset(admin, project.id) == 2


async def test_narrow_tokens_cannot_manage(domain: Domain, admin: Principal) -> None:
    project = await create(domain, admin)
    narrow = Principal("p", TokenKind.PROJECT, admin.org_ids, project_id=project.id)
    with pytest.raises(PermissionDenied, match="organization or user token"):
        await domain.projects.get(narrow, project.id)


async def test_update_changes_only_what_is_given(domain: Domain, admin: Principal) -> None:
    project = await create(domain, admin, hardware=int(Hardware.HW_4X4))
    updated = await domain.projects.update(
        admin,
        project.id,
        name=None,
        region_id="eu-central-1",
        cache_policy=None,
        hardware=None,
    )
    assert (updated.name, updated.region_id, updated.hardware) == (
        "app",
        "eu-central-1",
        Hardware.HW_4X4,
    )
    assert updated.cache_policy == project.cache_policy


async def test_names_in_organizations_shows_only_the_callers_live_projects(
    domain: Domain, admin: Principal
) -> None:
    web = await create(domain, admin, name="web")
    api = await create(domain, admin, name="api")
    gone = await create(domain, admin, name="gone")
    await domain.projects.delete(admin, gone.id)
    other = await domain.organizations.create("other")
    other_admin = Principal("o", TokenKind.ORG, frozenset({other.id}))
    theirs = await create(domain, other_admin, name="theirs")
    asked = [web.id, api.id, web.id, gone.id, theirs.id, "nonexistent", "<script>", ""]
    assert await domain.projects.names_in_organizations(admin, asked) == {
        web.id: "web",
        api.id: "api",
    }
    assert await domain.projects.names_in_organizations(other_admin, asked) == {theirs.id: "theirs"}
    assert await domain.projects.names_in_organizations(admin, []) == {}
    member = Principal("u", TokenKind.USER, frozenset({admin_org(admin), other.id}), user_id="u")
    assert set(await domain.projects.names_in_organizations(member, asked)) == {
        web.id,
        api.id,
        theirs.id,
    }
    project_token = Principal(
        "p", TokenKind.PROJECT, frozenset({admin_org(admin)}), project_id=web.id
    )
    with pytest.raises(PermissionDenied):
        await domain.projects.names_in_organizations(project_token, asked)


def admin_org(admin: Principal) -> str:
    return next(iter(admin.org_ids))
