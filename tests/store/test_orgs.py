"""The OrgStore's contract: organizations, users, memberships and tokens."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from depot_api.domain.ids import new_id
from depot_api.models import Organization, TokenKind, User
from depot_api.store import Store
from depot_api.store.errors import DuplicateKey

from .conftest import at, new_org, new_project, token_record


async def test_organizations_are_listed_oldest_first(store: Store) -> None:
    later = await new_org(store, "later", created=2)
    first = await new_org(store, "first", created=1)
    # The same moment: the ID decides, so the order is total.
    tied = [await new_org(store, f"tied-{n}", created=3) for n in range(3)]
    tied.sort(key=lambda org: org.id)
    assert await store.orgs.list_organizations() == [first, later, *tied]
    assert await store.orgs.count_organizations() == 5
    assert await store.orgs.get_organizations([later.id, "zzzzzzzzzz", first.id]) == [first, later]
    assert await store.orgs.get_organizations([]) == []


async def test_memberships_are_added_once(store: Store) -> None:
    orgs = [await new_org(store, name) for name in ("a", "b")]
    user = User(id=new_id(), name="ada", created_at=at(0))
    await store.orgs.insert_user(user)
    assert await store.orgs.get_user(user.id) == user
    assert await store.orgs.get_user("zzzzzzzzzz") is None
    assert await store.orgs.org_ids_of_user(user.id) == []
    for org in orgs:
        assert await store.orgs.add_membership(user.id, org.id, at(1))
    assert not await store.orgs.add_membership(user.id, orgs[0].id, at(2))
    assert await store.orgs.org_ids_of_user(user.id) == sorted(org.id for org in orgs)


async def test_a_token_whose_id_or_secret_hash_is_taken_is_not_stored(store: Store) -> None:
    org = await new_org(store)
    token = token_record(TokenKind.ORG, org_id=org.id)
    await store.orgs.insert_token(token)
    same_id = replace(token_record(TokenKind.ORG, org_id=org.id), id=token.id)
    same_hash = replace(token_record(TokenKind.ORG, org_id=org.id), secret_hash=token.secret_hash)
    for clash in (same_id, same_hash):
        with pytest.raises(DuplicateKey):
            await store.orgs.insert_token(clash)
    assert await store.orgs.get_token(token.id) == token
    assert await store.orgs.find_token(same_id.secret_hash) is None
    assert await store.orgs.get_token(same_hash.id) is None


async def test_revoked_tokens_are_found_but_not_listed(store: Store) -> None:
    org = await new_org(store)
    project = await new_project(store, org.id)
    tokens = [
        token_record(TokenKind.PROJECT, 2, org_id=org.id, project_id=project.id),
        token_record(TokenKind.PROJECT, 1, org_id=org.id, project_id=project.id),
        token_record(TokenKind.PROJECT, 3, org_id=org.id, project_id=project.id),
        token_record(TokenKind.ORG, 4, org_id=org.id),
        token_record(TokenKind.BUILD, 5, org_id=org.id, project_id=project.id, build_id=new_id()),
    ]
    for token in tokens:
        await store.orgs.insert_token(token)
    revoked = tokens[2]
    assert await store.orgs.revoke_token(revoked.id, at(10))
    assert not await store.orgs.revoke_token(revoked.id, at(11))  # once
    assert not await store.orgs.revoke_token("zzzzzzzzzz", at(11))

    found = await store.orgs.find_token(revoked.secret_hash)
    assert found is not None and found.revoked_at == at(10)
    assert await store.orgs.list_project_tokens(project.id) == [tokens[1], tokens[0]]
    standing = [t.id for t in await store.orgs.list_standing_tokens()]
    assert standing == [tokens[1].id, tokens[0].id, tokens[3].id]  # no build token, oldest first


async def test_a_revoked_token_keeps_its_description(store: Store) -> None:
    org = await new_org(store)
    token = token_record(TokenKind.ORG, org_id=org.id)
    await store.orgs.insert_token(token)
    assert await store.orgs.set_token_description(token.id, "ci")
    await store.orgs.revoke_token(token.id, at(1))
    assert not await store.orgs.set_token_description(token.id, "changed")
    assert not await store.orgs.set_token_description("zzzzzzzzzz", "missing")
    stored = await store.orgs.get_token(token.id)
    assert stored is not None and stored.description == "ci"


async def test_a_tokens_use_is_recorded_once_per_interval_and_never_backwards(
    store: Store, second_store: Store
) -> None:
    org = await new_org(store)
    token = token_record(TokenKind.ORG, org_id=org.id)
    await store.orgs.insert_token(token)

    async def last_used() -> object:
        stored = await store.orgs.get_token(token.id)
        assert stored is not None
        return stored.last_used_at

    await store.orgs.record_token_use(token.id, at(60), unless_since=at(0))
    assert await last_used() == at(60)
    # Recorded at 60, which is after 30: this use changes nothing.
    await store.orgs.record_token_use(token.id, at(90), unless_since=at(30))
    assert await last_used() == at(60)
    # Concurrent uses in two processes: one write, and the later moment never overwritten by
    # an earlier one.
    await asyncio.gather(
        store.orgs.record_token_use(token.id, at(200), unless_since=at(140)),
        second_store.orgs.record_token_use(token.id, at(190), unless_since=at(130)),
    )
    assert await last_used() in (at(190), at(200))
    await store.orgs.record_token_use(token.id, at(150), unless_since=at(90))
    assert await last_used() in (at(190), at(200))


async def test_an_organization_or_user_whose_id_is_taken_is_a_duplicate_key(store: Store) -> None:
    """Not the database's own IntegrityError: the domain draws a new ID on DuplicateKey."""
    org = await new_org(store)
    with pytest.raises(DuplicateKey):
        await store.orgs.insert_organization(Organization(org.id, "again", at(1)))
    user = User(new_id(), "ada", at(0))
    await store.orgs.insert_user(user)
    with pytest.raises(DuplicateKey):
        await store.orgs.insert_user(User(user.id, "bob", at(1)))
    assert await store.orgs.list_organizations() == [org]
    assert await store.orgs.get_user(user.id) == user
