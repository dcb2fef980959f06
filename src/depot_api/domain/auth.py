"""Authentication: from an Authorization header to a Principal, or Unauthenticated.

Every failure says what is wrong with the credential, never anything about other tokens.
A malformed secret (wrong prefix, length or checksum) is rejected before any lookup.

A Bearer that is a JWT is a CI job's OIDC token: it is verified (oidc_tokens) at each call,
never stored or kept, and becomes a CI principal, which may only create builds in a project
whose trust policy names it (trust_policies).

Principals are kept per process (the last KEPT_PRINCIPALS tokens seen), so that a call does
not read its token, and a user's memberships or a build token's build, every time. A kept one
is used only while the database's auth epoch is the one it was read at: every change that
could refuse a token or change what it may reach (a revocation, a project deleted, a
membership added) moves the epoch in the same transaction, and each call reads the epoch
first. So a token revoked through any process is refused by every process at its next call,
as when every call read its token, for one read of one row instead of two or three.

What time alone changes is checked at each call from what was read: a token's expiry, and a
build token's end. A build token whose build was running when it was read is good at least
until the grace period has passed since that read (had the build ended just after, the token
would still work that long); after that it is read again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from depot_api.domain.errors import Unauthenticated
from depot_api.domain.oidc_tokens import CiTokens, looks_like_jwt
from depot_api.domain.principal import Principal
from depot_api.domain.token_format import hash_secret, kind_of
from depot_api.models import BuildStatus, Token, TokenKind
from depot_api.store.interface import BuildStore, OrgStore

# A token's last use is recorded to this resolution: a busy token costs one write a minute,
# not one per call, and "last used" is still precise enough to spot a stale credential.
LAST_USE_RESOLUTION = timedelta(minutes=1)
# How many principals a process keeps, and for how long at most (a bound on what a bug in
# the epoch's bookkeeping could cost; the epoch alone keeps them right).
KEPT_PRINCIPALS = 10_000
KEPT_AT_MOST = timedelta(minutes=10)


@dataclass(slots=True)
class _Known:
    """A token as read, and the principal it resolved to."""

    token: Token
    principal: Principal
    epoch: int
    # Read again after this (a build token whose build ran when read; any other after a while).
    fresh_until: datetime
    # A build token whose build had ended when read: the end.
    build_ended_at: datetime | None = None
    # The last use recorded, as far as this process knows.
    last_used_at: datetime | None = None


class Authenticator:
    def __init__(
        self,
        *,
        org_store: OrgStore,
        build_store: BuildStore,
        build_token_grace: timedelta,
        now: Callable[[], datetime],
        ci_tokens: CiTokens | None = None,
    ) -> None:
        self._ci_tokens = ci_tokens
        self._org_store = org_store
        self._build_store = build_store
        self._grace = build_token_grace
        self._now = now
        self._known: dict[str, _Known] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        secret = _bearer_secret(authorization)
        if looks_like_jwt(secret):
            return await self._ci_principal(secret)
        kind = kind_of(secret)
        if kind is None:
            raise Unauthenticated(
                "malformed token: not a depot-api token (wrong prefix, length or checksum)"
            )
        return await self.authenticate_hash(hash_secret(secret), kind)

    async def authenticate_hash(self, secret_hash: str, kind: TokenKind) -> Principal:
        """The principal of the token with this secret hash, checked as at every call (the
        console's sessions keep only the hash: a revoked token ends its sessions at once)."""
        # The epoch first: a change committed after this read moves it for the next call.
        epoch = await self._org_store.auth_epoch()
        now = self._now()
        known = self._known.get(secret_hash)
        if known is None or known.epoch != epoch or now >= known.fresh_until:
            known = await self._read(secret_hash, kind, epoch, now)
        token = known.token
        if token.expires_at is not None and now >= token.expires_at:
            raise Unauthenticated("token has expired")
        if known.build_ended_at is not None and now >= known.build_ended_at + self._grace:
            raise Unauthenticated(
                f"build token has expired: build {token.build_id} ended at "
                f"{known.build_ended_at.isoformat()}"
            )
        stale_since = now - LAST_USE_RESOLUTION
        if known.last_used_at is None or known.last_used_at < stale_since:
            await self._org_store.record_token_use(token.id, now, stale_since)
            known.last_used_at = now
        return known.principal

    async def _ci_principal(self, token: str) -> Principal:
        if self._ci_tokens is None:
            raise Unauthenticated("this server takes no OIDC tokens")
        identity = await self._ci_tokens.verify(token)
        return Principal(identity.caller_id, TokenKind.CI, frozenset(), ci=identity)

    async def _read(self, secret_hash: str, kind: TokenKind, epoch: int, now: datetime) -> _Known:
        """Read the token (and what its principal needs) and keep it; Unauthenticated for a
        token that no longer works at all, which is not kept."""
        self._known.pop(secret_hash, None)
        token = await self._org_store.find_token(secret_hash)
        if token is None or token.kind is not kind:
            raise Unauthenticated("unknown token")
        if token.revoked_at is not None:
            raise Unauthenticated("token has been revoked")
        known = _Known(
            token=token,
            principal=await self._principal(token),
            epoch=epoch,
            fresh_until=now + KEPT_AT_MOST,
            last_used_at=token.last_used_at,
        )
        if token.kind is TokenKind.BUILD:
            known.build_ended_at = await self._build_end(token)
            if known.build_ended_at is None:
                known.fresh_until = now + min(self._grace, KEPT_AT_MOST)
        if len(self._known) >= KEPT_PRINCIPALS:
            del self._known[next(iter(self._known))]  # the one kept longest
        self._known[secret_hash] = known
        return known

    async def _principal(self, token: Token) -> Principal:
        match token.kind:
            case TokenKind.USER:
                assert token.user_id is not None
                org_ids = await self._org_store.org_ids_of_user(token.user_id)
                return Principal(token.id, token.kind, frozenset(org_ids), user_id=token.user_id)
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

    async def _build_end(self, token: Token) -> datetime | None:
        """When a build token's build ended; None while it runs. A build token lives while its
        build runs, and for a grace period after it ends (clients send a last status flush and
        health ping after finishing)."""
        assert token.build_id is not None
        build = await self._build_store.get_build(token.build_id)
        if build is None:
            raise Unauthenticated("build token's build no longer exists")
        if build.status is BuildStatus.RUNNING:
            return None
        assert build.finished_at is not None
        return build.finished_at


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
