"""The ProjectStore's contract: unique live names, deleted projects hidden, keyset order,
cache generations, and one CA per project."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from depot_api.models import CachePolicy, Hardware, ProjectCA, TokenKind
from depot_api.store import Store
from depot_api.store.errors import DuplicateKey, NameTaken
from depot_api.times import to_micros

from .conftest import at, new_org, new_project, project_record, token_record


async def test_a_live_name_is_taken_within_its_organization_only(store: Store) -> None:
    acme, other = await new_org(store, "acme"), await new_org(store, "other")
    first = await new_project(store, acme.id, "app")
    with pytest.raises(NameTaken):
        await store.projects.insert_project(project_record(acme.id, "app"))
    await new_project(store, other.id, "app")  # another organization's name space
    # Deleted, its name is free again.
    assert await store.projects.delete_project(first.id, at(1))
    again = await new_project(store, acme.id, "app")
    assert await store.projects.get_project(again.id) == again


async def test_a_taken_project_id_is_a_duplicate_key(store: Store) -> None:
    org = await new_org(store)
    project = await new_project(store, org.id, "app")
    with pytest.raises(DuplicateKey):
        await store.projects.insert_project(replace(project_record(org.id, "b"), id=project.id))
    assert await store.projects.get_project(project.id) == project


async def test_a_deleted_project_is_hidden_and_its_tokens_revoked(store: Store) -> None:
    org = await new_org(store)
    project = await new_project(store, org.id)
    token = token_record(TokenKind.PROJECT, org_id=org.id, project_id=project.id)
    await store.orgs.insert_token(token)

    assert await store.projects.delete_project(project.id, at(5))
    assert not await store.projects.delete_project(project.id, at(6))  # not live any more
    assert await store.projects.get_project(project.id) is None
    assert await store.projects.list_projects([org.id], None, 10) == []
    assert await store.projects.update_project(project.id, name="back") is None
    assert await store.projects.bump_cache_generation(project.id) is None
    revoked = await store.orgs.get_token(token.id)
    assert revoked is not None and revoked.revoked_at == at(5)  # in the same transaction


async def test_projects_are_listed_oldest_first_from_a_position(store: Store) -> None:
    acme, other, unlisted = [await new_org(store, name) for name in ("a", "b", "c")]
    projects = [
        await new_project(store, acme.id, "a2", created=2),
        await new_project(store, other.id, "b1", created=1),
        await new_project(store, acme.id, "a3", created=3),
        await new_project(store, acme.id, "a3-tied", created=3),
    ]
    await new_project(store, unlisted.id, "c1", created=0)
    expected = sorted(projects, key=lambda p: (p.created_at, p.id))
    orgs = [acme.id, other.id]
    assert await store.projects.list_projects(orgs, None, 10) == expected
    # Page by page, each continuing strictly after the last one seen.
    seen, after = [], None
    while page := await store.projects.list_projects(orgs, after, 1):
        seen += page
        after = (to_micros(page[-1].created_at), page[-1].id)
    assert seen == expected
    assert await store.projects.list_projects([], None, 10) == []


async def test_an_update_changes_only_what_it_names(store: Store) -> None:
    org = await new_org(store)
    project = await new_project(store, org.id, "app")
    await new_project(store, org.id, "taken")
    policy = CachePolicy(keep_gb=7, keep_days=3, keep_bytes=None)
    updated = await store.projects.update_project(
        project.id, region_id="eu-central-1", cache_policy=policy
    )
    assert updated == replace(project, region_id="eu-central-1", cache_policy=policy)
    hardware = await store.projects.update_project(project.id, hardware=Hardware.HW_4X4)
    assert hardware == replace(updated, hardware=Hardware.HW_4X4)
    assert await store.projects.update_project(project.id) == hardware  # nothing named

    with pytest.raises(NameTaken):
        await store.projects.update_project(project.id, name="taken", region_id="us-east-1")
    assert await store.projects.get_project(project.id) == hardware  # nothing changed
    assert await store.projects.update_project("zzzzzzzzzz", name="x") is None


async def test_each_new_cache_generation_is_counted_once(store: Store, second_store: Store) -> None:
    org = await new_org(store)
    project = await new_project(store, org.id)
    generations = await asyncio.gather(
        *(s.projects.bump_cache_generation(project.id) for s in (store, second_store) * 3)
    )
    assert sorted(g for g in generations if g is not None) == [1, 2, 3, 4, 5, 6]
    stored = await store.projects.get_project(project.id)
    assert stored is not None and stored.cache_generation == 6


async def test_a_project_keeps_the_first_ca_stored(store: Store, second_store: Store) -> None:
    org = await new_org(store)
    project = await new_project(store, org.id)
    assert await store.projects.get_project_ca(project.id) is None
    cas = [ProjectCA(project.id, f"cert {n}", f"key {n}", at(n)) for n in range(4)]
    stores = (store, second_store) * 2
    kept = await asyncio.gather(
        *(s.projects.insert_project_ca(ca) for s, ca in zip(stores, cas, strict=True))
    )
    # Of concurrent callers, one stores its CA and every caller gets that one back.
    assert len(set(kept)) == 1 and kept[0] in cas
    assert await store.projects.get_project_ca(project.id) == kept[0]
    assert await store.projects.insert_project_ca(replace(cas[0], cert_pem="later")) == kept[0]
