"""Console sessions: signing in to the web console with an org or user token.

The browser gets an opaque random session ID (32 bytes); the store keeps its SHA-256 and the
secret hash of the token signed in with, never the token. Every page resolves the session and
then checks that token exactly as an API call would (Authenticator.authenticate_hash), so a
revoked token ends its sessions at once, in every process, and signing out (a delete) does too:
the database is the truth. Sessions expire after a set lifetime.

CSRF: each session's form token is an HMAC of its session ID under a key derived from the
same ID; it is never stored, cannot be computed without the cookie, and is compared in
constant time (docs/decisions.md, "Console sessions").
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from depot_api.domain.auth import Authenticator
from depot_api.domain.errors import PermissionDenied, Unauthenticated
from depot_api.domain.principal import Principal
from depot_api.domain.token_format import hash_secret, kind_of
from depot_api.models import ConsoleSession
from depot_api.store.interface import SessionStore
from depot_api.times import to_micros

SESSION_BYTES = 32


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class ConsoleSessions:
    def __init__(
        self,
        store: SessionStore,
        authenticator: Authenticator,
        *,
        lifetime: timedelta,
        now: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._auth = authenticator
        self._lifetime = lifetime
        self._now = now

    async def sign_in(self, token: str) -> tuple[str, Principal]:
        """A new session for an org or user token: its ID (for the cookie) and principal.
        Unauthenticated for a bad token, PermissionDenied for a narrower one."""
        token = token.strip()
        if not token:
            raise Unauthenticated("enter an organization or user token")
        principal = await self._auth.authenticate(f"Bearer {token}")
        principal.require_manager("sign in to the console")
        kind = kind_of(token)
        if kind is None:  # authenticate accepted it, so this is a CI (OIDC) token
            raise PermissionDenied("a CI token cannot sign in to the console")
        session_id = secrets.token_urlsafe(SESSION_BYTES)
        now = self._now()
        # Expired sessions are cleared here, where sessions are made: the table then holds
        # about as many rows as sign-ins in one lifetime, with no sweeper to run.
        await self._store.purge_expired(to_micros(now))
        await self._store.create(
            ConsoleSession(
                session_hash(session_id),
                hash_secret(token),
                kind,
                to_micros(now),
                to_micros(now + self._lifetime),
            )
        )
        return session_id, principal

    async def principal(self, session_id: str | None) -> Principal | None:
        """The signed-in principal of this session, or None: no such session, signed out,
        expired, or its token no longer works (revoked, expired)."""
        if not session_id or len(session_id) > 100:
            return None
        session = await self._store.find(session_hash(session_id), to_micros(self._now()))
        if session is None:
            return None
        try:
            return await self._auth.authenticate_hash(session.token_hash, session.token_kind)
        except Unauthenticated:
            await self._store.end(session.session_hash)
            return None

    async def sign_out(self, session_id: str) -> None:
        await self._store.end(session_hash(session_id))

    @staticmethod
    def csrf_token(session_id: str) -> str:
        key = hashlib.sha256(b"depot-api console csrf\0" + session_id.encode()).digest()
        return hmac.new(key, session_id.encode(), hashlib.sha256).hexdigest()

    @classmethod
    def csrf_ok(cls, session_id: str | None, given: str | None) -> bool:
        if not session_id or not given:
            return False
        # As bytes: compare_digest refuses (TypeError) a str with a letter beyond ASCII.
        return hmac.compare_digest(cls.csrf_token(session_id).encode(), given.encode())
