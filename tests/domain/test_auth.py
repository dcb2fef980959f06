from __future__ import annotations

from datetime import timedelta

import pytest

from depot_api.domain.errors import InvalidArgument, NotFound, Unauthenticated
from depot_api.domain.principal import Principal
from depot_api.domain.token_format import mint
from depot_api.domain.tokens import lifetime_of
from depot_api.models import TokenKind
from depot_api.wiring import Domain

from ..factories import new_project
from .conftest import Clock


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing token"),
        ("", "missing token"),
        ("Bearer ", "missing token"),
        ("Bearer    ", "missing token"),
        ("Basic dXNlcjpwYXNz", "Bearer scheme"),
        ("Bearer nope", "malformed"),
        ("Bearer " + mint(TokenKind.ORG)[:-1] + "!", "malformed"),
        ("Bearer " + mint(TokenKind.ORG), "unknown token"),
    ],
    # Named, not shown: a freshly minted token in a test's ID differs between parallel workers.
    ids=[
        "no-header",
        "empty",
        "bearer-only",
        "bearer-blanks",
        "basic",
        "not-a-token",
        "bad-character",
        "unknown-token",
    ],
)
async def test_rejected_credentials(domain: Domain, header: str | None, message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        await domain.authenticator.authenticate(header)


async def test_each_kind_resolves_to_its_scope(domain: Domain, admin: Principal) -> None:
    (org_id,) = admin.org_ids
    _, org_secret = await domain.tokens.create_org_token(org_id)
    org = await domain.authenticator.authenticate(f"bearer {org_secret}")  # scheme is case-blind
    assert (org.kind, org.org_ids) == (TokenKind.ORG, frozenset({org_id}))

    user = await domain.organizations.create_user("ada")
    await domain.organizations.add_member(user.id, org_id)
    _, user_secret = await domain.tokens.create_user_token(user.id)
    member = await domain.authenticator.authenticate(f"Bearer {user_secret}")
    assert (member.kind, member.user_id, member.org_ids) == (
        TokenKind.USER,
        user.id,
        frozenset({org_id}),
    )

    project_id = await new_project(domain, admin, "p")
    _, project_secret = await domain.tokens.create_project_token(admin, project_id, "ci")
    narrow = await domain.authenticator.authenticate(f"Bearer {project_secret}")
    assert (narrow.kind, narrow.project_id, narrow.org_ids) == (
        TokenKind.PROJECT,
        project_id,
        frozenset({org_id}),
    )


async def test_revoked_tokens_stop_at_once(domain: Domain, admin: Principal) -> None:
    project_id = await new_project(domain, admin, "p")
    token, secret = await domain.tokens.create_project_token(admin, project_id, "ci")
    await domain.authenticator.authenticate(f"Bearer {secret}")
    await domain.tokens.delete_project_token(admin, token.id)
    with pytest.raises(Unauthenticated, match="revoked"):
        await domain.authenticator.authenticate(f"Bearer {secret}")


async def test_user_membership_is_read_per_request(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    user = await domain.organizations.create_user("bob")
    _, secret = await domain.tokens.create_user_token(user.id)
    assert (await domain.authenticator.authenticate(f"Bearer {secret}")).org_ids == frozenset()
    (org_id,) = admin.org_ids
    await domain.organizations.add_member(user.id, org_id)
    assert (await domain.authenticator.authenticate(f"Bearer {secret}")).org_ids == {org_id}


async def test_a_token_stops_working_when_it_expires(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    (org_id,) = admin.org_ids
    token, secret = await domain.tokens.create_org_token(org_id, "ci", timedelta(hours=1))
    assert token.expires_at == clock.now + timedelta(hours=1)
    clock.advance(3599)
    await domain.authenticator.authenticate(f"Bearer {secret}")
    clock.advance(1)
    with pytest.raises(Unauthenticated, match="expired"):
        await domain.authenticator.authenticate(f"Bearer {secret}")


@pytest.mark.parametrize(
    ("lifetime", "message"),
    [
        (timedelta(0), "must be positive"),
        (timedelta(seconds=-5), "must be positive"),
        (timedelta(days=3651), "too long"),
    ],
)
async def test_a_lifetime_must_be_positive_and_bounded(
    domain: Domain, admin: Principal, lifetime: timedelta, message: str
) -> None:
    (org_id,) = admin.org_ids
    with pytest.raises(InvalidArgument, match=message):
        await domain.tokens.create_org_token(org_id, "ci", lifetime)
    with pytest.raises(InvalidArgument, match=message):
        await domain.tokens.create_machine_token("agents", lifetime)
    assert await domain.tokens.list_standing() == []


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, None), (1, timedelta(seconds=1)), (315_360_000, timedelta(days=3650))],
)
def test_lifetime_in_seconds(seconds: int, expected: timedelta | None) -> None:
    assert lifetime_of(seconds, "expires_in_seconds") == expected


@pytest.mark.parametrize("seconds", [-1, 315_360_001, 2**63 - 1, -(2**63)])
def test_lifetime_in_seconds_out_of_range(seconds: int) -> None:
    with pytest.raises(InvalidArgument, match="expires_in_seconds"):
        lifetime_of(seconds, "expires_in_seconds")


async def test_last_use_is_recorded_to_the_minute(
    domain: Domain, admin: Principal, clock: Clock
) -> None:
    project_id = await new_project(domain, admin, "p")
    token, secret = await domain.tokens.create_project_token(admin, project_id, "ci")
    assert token.last_used_at is None

    async def last_used() -> object:
        [listed] = await domain.tokens.list_project_tokens(admin, project_id)
        return listed.last_used_at

    first_use = clock.now
    await domain.authenticator.authenticate(f"Bearer {secret}")
    assert await last_used() == first_use
    # Within the minute: not written again (a busy token costs one write a minute).
    clock.advance(59)
    await domain.authenticator.authenticate(f"Bearer {secret}")
    assert await last_used() == first_use
    clock.advance(2)
    await domain.authenticator.authenticate(f"Bearer {secret}")
    assert await last_used() == clock.now
    # A refused call is not a use.
    await domain.tokens.delete_project_token(admin, token.id)
    clock.advance(120)
    with pytest.raises(Unauthenticated):
        await domain.authenticator.authenticate(f"Bearer {secret}")
    stored = await domain.store.orgs.get_token(token.id)
    assert stored is not None and stored.last_used_at == clock.now - timedelta(seconds=120)


async def test_any_kind_of_token_can_be_revoked(domain: Domain, admin: Principal) -> None:
    (org_id,) = admin.org_ids
    org_token, org_secret = await domain.tokens.create_org_token(org_id, "ops")
    machine_token, machine_secret = await domain.tokens.create_machine_token("agents")
    assert {t.id for t in await domain.tokens.list_standing()} == {org_token.id, machine_token.id}
    for token, secret in ((org_token, org_secret), (machine_token, machine_secret)):
        await domain.tokens.revoke(token.id)
        with pytest.raises(Unauthenticated, match="revoked"):
            await domain.authenticator.authenticate(f"Bearer {secret}")
    assert await domain.tokens.list_standing() == []
    with pytest.raises(NotFound, match="already revoked"):
        await domain.tokens.revoke(org_token.id)
