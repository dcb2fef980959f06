"""Principals kept per process (domain.auth): a kept one saves the reads, and every change
that could refuse a token or change what it reaches is seen at once, through any process.

Two domains over one database stand for two server processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import delete, insert, update

from depot_api.config import Settings
from depot_api.domain.builds import Outcome
from depot_api.domain.errors import Unauthenticated
from depot_api.domain.principal import Principal
from depot_api.store import open_store
from depot_api.store import schema as t
from depot_api.store.database import create_engine
from depot_api.store.errors import StoreUnavailable
from depot_api.wiring import Domain, build_domain

from ..factories import new_project
from .conftest import Clock


@pytest.fixture
async def other(domain_settings: Settings, clock: Clock) -> AsyncIterator[Domain]:
    """A second server process over the same database."""
    store = open_store(domain_settings.database_url)
    built = build_domain(store, domain_settings, now=clock)
    try:
        yield built
    finally:
        await built.endpoints.close()
        await store.close()


async def behind_the_servers_back(database_url: str, statement: object) -> None:
    """Change the database as no server would: without moving the auth epoch."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(statement)  # type: ignore[call-overload]
    finally:
        await engine.dispose()


async def test_a_kept_principal_is_not_read_again_until_the_epoch_moves(
    domain: Domain, admin: Principal, database_url: str
) -> None:
    project_id = await new_project(domain, admin, "p")
    token, secret = await domain.tokens.create_project_token(admin, project_id, "ci")
    kept = await domain.authenticator.authenticate(f"Bearer {secret}")
    # Revoked behind the servers' back: the kept principal still serves (it was not read)…
    await behind_the_servers_back(
        database_url, update(t.tokens).where(t.tokens.c.id == token.id).values(revoked_at=1)
    )
    assert await domain.authenticator.authenticate(f"Bearer {secret}") == kept
    # …until anything moves the epoch: then the token is read again, and refused.
    other_token, _ = await domain.tokens.create_project_token(admin, project_id, "other")
    await domain.tokens.delete_project_token(admin, other_token.id)
    with pytest.raises(Unauthenticated, match="revoked"):
        await domain.authenticator.authenticate(f"Bearer {secret}")


async def test_a_token_revoked_through_one_process_is_refused_by_another_at_once(
    domain: Domain, other: Domain, admin: Principal
) -> None:
    project_id = await new_project(domain, admin, "p")
    token, secret = await domain.tokens.create_project_token(admin, project_id, "ci")
    await other.authenticator.authenticate(f"Bearer {secret}")  # kept by the other
    await domain.tokens.delete_project_token(admin, token.id)
    with pytest.raises(Unauthenticated, match="revoked"):
        await other.authenticator.authenticate(f"Bearer {secret}")


async def test_a_membership_added_through_one_process_counts_in_another_at_once(
    domain: Domain, other: Domain, admin: Principal
) -> None:
    user = await domain.organizations.create_user("ada")
    _, secret = await domain.tokens.create_user_token(user.id)
    assert (await other.authenticator.authenticate(f"Bearer {secret}")).org_ids == frozenset()
    (org_id,) = admin.org_ids
    await domain.organizations.add_member(user.id, org_id)
    assert (await other.authenticator.authenticate(f"Bearer {secret}")).org_ids == {org_id}


async def test_a_deleted_projects_tokens_stop_in_every_process_at_once(
    domain: Domain, other: Domain, admin: Principal
) -> None:
    project_id = await new_project(domain, admin, "p")
    _, project_secret = await domain.tokens.create_project_token(admin, project_id, "ci")
    _, build_secret = await domain.builds.create(admin, project_id)
    for secret in (project_secret, build_secret):
        await other.authenticator.authenticate(f"Bearer {secret}")
    await domain.projects.delete(admin, project_id)
    for secret in (project_secret, build_secret):
        with pytest.raises(Unauthenticated):
            await other.authenticator.authenticate(f"Bearer {secret}")


async def test_a_build_token_kept_while_its_build_ran_stops_after_the_grace(
    domain: Domain, other: Domain, admin: Principal, clock: Clock
) -> None:
    """Kept while the build ran; the build ends through another process (which moves no
    epoch): the token still works for the grace period after the end, then stops."""
    grace = 60  # domain_settings' build_token_grace
    project_id = await new_project(domain, admin, "p")
    build, secret = await domain.builds.create(admin, project_id)
    await other.authenticator.authenticate(f"Bearer {secret}")  # kept: running
    clock.advance(30)
    await domain.builds.finish(admin, build.id, Outcome.success())
    clock.advance(grace - 1)
    await other.authenticator.authenticate(f"Bearer {secret}")
    clock.advance(1)
    with pytest.raises(Unauthenticated, match=f"build {build.id} ended at"):
        await other.authenticator.authenticate(f"Bearer {secret}")


async def test_a_kept_token_stops_when_it_expires(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    (org_id,) = admin.org_ids
    _, secret = await domain.tokens.create_org_token(org_id, "ci", timedelta(minutes=5))
    await domain.authenticator.authenticate(f"Bearer {secret}")
    clock.advance(299)
    await domain.authenticator.authenticate(f"Bearer {secret}")
    clock.advance(1)
    with pytest.raises(Unauthenticated, match="expired"):
        await domain.authenticator.authenticate(f"Bearer {secret}")


async def test_a_process_keeps_a_bounded_number_of_principals(
    domain: Domain, admin: Principal, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bound, the principal kept longest is dropped and read again when it comes."""
    monkeypatch.setattr("depot_api.domain.auth.KEPT_PRINCIPALS", 2)
    (org_id,) = admin.org_ids
    tokens = [await domain.tokens.create_org_token(org_id, f"t{i}") for i in range(3)]
    for _, secret in tokens:
        await domain.authenticator.authenticate(f"Bearer {secret}")
    # Revoke all three behind the servers' back: only the dropped one is read again.
    await behind_the_servers_back(
        database_url, update(t.tokens).where(t.tokens.c.org_id == org_id).values(revoked_at=1)
    )
    with pytest.raises(Unauthenticated, match="revoked"):
        await domain.authenticator.authenticate(f"Bearer {tokens[0][1]}")
    for _, secret in tokens[1:]:
        await domain.authenticator.authenticate(f"Bearer {secret}")


async def test_without_the_epoch_row_every_call_is_refused(
    domain: Domain, admin: Principal, database_url: str
) -> None:
    """Fail closed: with no epoch, no change would reach kept principals."""
    (org_id,) = admin.org_ids
    _, secret = await domain.tokens.create_org_token(org_id, "ci")
    await domain.authenticator.authenticate(f"Bearer {secret}")
    await behind_the_servers_back(database_url, delete(t.auth_epoch))
    try:
        with pytest.raises(StoreUnavailable, match="auth_epoch"):
            await domain.authenticator.authenticate(f"Bearer {secret}")
    finally:
        await behind_the_servers_back(database_url, insert(t.auth_epoch).values(id=1, value=0))
