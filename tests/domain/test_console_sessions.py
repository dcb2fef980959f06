"""Console sessions on a real database (SQLite and PostgreSQL): sign-in, sign-out, expiry,
revocation ending a session at once, and the CSRF token."""

from __future__ import annotations

import pytest

from depot_api.domain.console_sessions import ConsoleSessions, session_hash
from depot_api.domain.errors import PermissionDenied, Unauthenticated
from depot_api.domain.principal import Principal
from depot_api.models import TokenKind
from depot_api.wiring import Domain
from tests.domain.conftest import Clock
from tests.factories import new_project


async def _org_token(domain: Domain) -> tuple[str, str, str]:
    org = await domain.organizations.create("acme")
    token, secret = await domain.tokens.create_org_token(org.id)
    return org.id, token.id, secret


async def test_sign_in_gives_a_session_of_the_token(domain: Domain) -> None:
    org_id, token_id, secret = await _org_token(domain)
    session_id, principal = await domain.console_sessions.sign_in(secret)
    assert principal.org_ids == frozenset({org_id})
    resolved = await domain.console_sessions.principal(session_id)
    assert resolved is not None and resolved.token_id == token_id
    # Neither the session ID nor the token is stored: only their hashes.
    stored = await domain.store.sessions.find(session_hash(session_id), 0)
    assert stored is not None
    assert secret not in repr(stored) and session_id not in repr(stored)


async def test_sign_out_ends_the_session(domain: Domain) -> None:
    _, _, secret = await _org_token(domain)
    session_id, _ = await domain.console_sessions.sign_in(secret)
    await domain.console_sessions.sign_out(session_id)
    assert await domain.console_sessions.principal(session_id) is None


async def test_sessions_expire(domain: Domain, clock: Clock) -> None:
    _, _, secret = await _org_token(domain)
    session_id, _ = await domain.console_sessions.sign_in(secret)
    clock.advance(12 * 3600 - 1)
    assert await domain.console_sessions.principal(session_id) is not None
    clock.advance(1)
    assert await domain.console_sessions.principal(session_id) is None


async def test_revoking_the_token_ends_its_sessions_at_once(domain: Domain) -> None:
    _, token_id, secret = await _org_token(domain)
    session_id, _ = await domain.console_sessions.sign_in(secret)
    await domain.tokens.revoke(token_id)
    assert await domain.console_sessions.principal(session_id) is None
    assert await domain.store.sessions.find(session_hash(session_id), 0) is None


@pytest.mark.parametrize("bad", ["", "   ", "nonsense", "depot_org_" + "x" * 40])
async def test_a_bad_token_cannot_sign_in(domain: Domain, bad: str) -> None:
    with pytest.raises(Unauthenticated):
        await domain.console_sessions.sign_in(bad)


async def test_a_project_token_cannot_sign_in(domain: Domain) -> None:
    org_id, _, _ = await _org_token(domain)
    admin = Principal("t", TokenKind.ORG, frozenset({org_id}))
    _, project_secret = await domain.tokens.create_project_token(
        admin, await new_project(domain, admin), "ci"
    )
    with pytest.raises(PermissionDenied, match="cannot sign in"):
        await domain.console_sessions.sign_in(project_secret)


@pytest.mark.parametrize("session_id", [None, "", "unknown", "x" * 5000])
async def test_unknown_sessions_have_no_principal(domain: Domain, session_id: str | None) -> None:
    assert await domain.console_sessions.principal(session_id) is None


def test_csrf_tokens_are_per_session_and_checked() -> None:
    token = ConsoleSessions.csrf_token("session-a")
    assert ConsoleSessions.csrf_ok("session-a", token)
    assert not ConsoleSessions.csrf_ok("session-b", token)
    assert not ConsoleSessions.csrf_ok("session-a", None)
    assert not ConsoleSessions.csrf_ok("session-a", "")
    assert not ConsoleSessions.csrf_ok(None, token)


async def test_expired_sessions_are_purged_and_live_ones_kept(domain: Domain, clock: Clock) -> None:
    _, _, secret = await _org_token(domain)
    old, _ = await domain.console_sessions.sign_in(secret)
    clock.advance(6 * 3600)
    young, _ = await domain.console_sessions.sign_in(secret)
    clock.advance(6 * 3600)
    now_us = int(clock.now.timestamp() * 1_000_000)
    assert await domain.store.sessions.purge_expired(now_us) == 1
    assert await domain.console_sessions.principal(old) is None
    assert await domain.console_sessions.principal(young) is not None


async def test_signing_in_clears_expired_sessions(domain: Domain, clock: Clock) -> None:
    _, _, secret = await _org_token(domain)
    await domain.console_sessions.sign_in(secret)
    await domain.console_sessions.sign_in(secret)
    clock.advance(13 * 3600)  # both expired
    await domain.console_sessions.sign_in(secret)  # clears them
    now_us = int(clock.now.timestamp() * 1_000_000)
    assert await domain.store.sessions.purge_expired(now_us) == 0
    clock.advance(13 * 3600)
    assert await domain.store.sessions.purge_expired(int(clock.now.timestamp() * 1_000_000)) == 1
