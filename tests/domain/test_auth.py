from __future__ import annotations

import pytest

from depot_api.domain.errors import Unauthenticated
from depot_api.domain.principal import Principal
from depot_api.domain.token_format import mint
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
