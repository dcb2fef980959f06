"""Authentication: from an Authorization header to a Principal, or Unauthenticated.

Every failure says what is wrong with the credential, never anything about other tokens.
A malformed secret (wrong prefix, length or checksum) is rejected before any lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from depot_api.domain.errors import Unauthenticated
from depot_api.domain.principal import Principal
from depot_api.domain.token_format import hash_secret, kind_of
from depot_api.models import BuildStatus, Token, TokenKind
from depot_api.store.interface import BuildStore, OrgStore

# A token's last use is recorded to this resolution: a busy token costs one write a minute,
# not one per call, and "last used" is still precise enough to spot a stale credential.
LAST_USE_RESOLUTION = timedelta(minutes=1)


class Authenticator:
    def __init__(
        self,
        *,
        org_store: OrgStore,
        build_store: BuildStore,
        build_token_grace: timedelta,
        now: Callable[[], datetime],
    ) -> None:
        self._org_store = org_store
        self._build_store = build_store
        self._grace = build_token_grace
        self._now = now

    async def authenticate(self, authorization: str | None) -> Principal:
        secret = _bearer_secret(authorization)
        kind = kind_of(secret)
        if kind is None:
            raise Unauthenticated(
                "malformed token: not a depot-api token (wrong prefix, length or checksum)"
            )
        token = await self._org_store.find_token(hash_secret(secret))
        if token is None or token.kind is not kind:
            raise Unauthenticated("unknown token")
        now = self._now()
        if token.revoked_at is not None:
            raise Unauthenticated("token has been revoked")
        if token.expires_at is not None and now >= token.expires_at:
            raise Unauthenticated("token has expired")
        principal = await self._principal(token, now)
        stale_since = now - LAST_USE_RESOLUTION
        if token.last_used_at is None or token.last_used_at < stale_since:
            await self._org_store.record_token_use(token.id, now, stale_since)
        return principal

    async def _principal(self, token: Token, now: datetime) -> Principal:
        match token.kind:
            case TokenKind.USER:
                assert token.user_id is not None
                org_ids = await self._org_store.org_ids_of_user(token.user_id)
                return Principal(token.id, token.kind, frozenset(org_ids), user_id=token.user_id)
            case TokenKind.BUILD:
                await self._require_live_build(token, now)
            case TokenKind.MACHINE:
                # Machines belong to the installation, not to an organization.
                return Principal(token.id, token.kind, frozenset())
        assert token.org_id is not None
        return Principal(
            token.id,
            token.kind,
            frozenset((token.org_id,)),
            project_id=token.project_id,
            build_id=token.build_id,
        )

    async def _require_live_build(self, token: Token, now: datetime) -> None:
        """A build token lives while its build runs, and for a grace period after it ends
        (clients send a last status flush and health ping after finishing)."""
        assert token.build_id is not None
        build = await self._build_store.get_build(token.build_id)
        if build is None:
            raise Unauthenticated("build token's build no longer exists")
        if build.status is not BuildStatus.RUNNING:
            assert build.finished_at is not None
            if now >= build.finished_at + self._grace:
                raise Unauthenticated(
                    f"build token has expired: build {build.id} ended at "
                    f"{build.finished_at.isoformat()}"
                )


def _bearer_secret(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing token: send the header 'Authorization: Bearer <token>'")
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer":
        raise Unauthenticated("the Authorization header must use the Bearer scheme")
    if not secret:
        raise Unauthenticated("missing token: the Bearer credential is empty")
    return secret
