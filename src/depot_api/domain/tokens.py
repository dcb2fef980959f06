"""Tokens: issuing and managing them. (Authentication lives in domain.auth.)

Secrets are minted here, returned once, and stored only as their SHA-256 hash.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from depot_api.domain.errors import InvalidField, NotFound
from depot_api.domain.ids import new_id, require_id, with_fresh_ids
from depot_api.domain.principal import Principal
from depot_api.domain.projects import Projects
from depot_api.domain.text import require_description
from depot_api.domain.token_format import hash_secret, mint
from depot_api.models import Token, TokenKind
from depot_api.store.interface import OrgStore

# The longest lifetime a token may be given; without one, a token lives until revoked.
MAX_LIFETIME = timedelta(days=3650)


def lifetime_of(seconds: int, field: str) -> timedelta | None:
    """A lifetime given in whole seconds, where 0 (proto3's unset) means no expiry.

    Checked before a timedelta is built, which would overflow on an extreme int64."""
    if seconds == 0:
        return None
    if seconds < 0:
        raise InvalidField(field, "must not be negative (0 or unset: never expires)")
    if seconds > MAX_LIFETIME.total_seconds():
        raise InvalidField(
            field,
            f"is too long: at most {int(MAX_LIFETIME.total_seconds())} seconds "
            f"({MAX_LIFETIME.days} days)",
        )
    return timedelta(seconds=seconds)


def require_lifetime(lifetime: timedelta | None, field: str) -> timedelta | None:
    """None (no expiry) or a positive lifetime of at most MAX_LIFETIME."""
    if lifetime is None:
        return None
    if lifetime <= timedelta(0):
        raise InvalidField(field, "must be positive (or left out: never expires)")
    if lifetime > MAX_LIFETIME:
        raise InvalidField(field, f"is too long: at most {MAX_LIFETIME.days} days")
    return lifetime


class Tokens:
    def __init__(
        self, org_store: OrgStore, projects: Projects, *, now: Callable[[], datetime]
    ) -> None:
        self._org_store = org_store
        self._projects = projects
        self._now = now

    def new_token(
        self,
        kind: TokenKind,
        description: str = "",
        *,
        org_id: str | None = None,
        user_id: str | None = None,
        project_id: str | None = None,
        build_id: str | None = None,
        lifetime: timedelta | None = None,
    ) -> tuple[Token, str]:
        """A token record and its secret, not yet stored."""
        secret = mint(kind)
        now = self._now()
        token = Token(
            id=new_id(),
            kind=kind,
            secret_hash=hash_secret(secret),
            description=description,
            created_at=now,
            org_id=org_id,
            user_id=user_id,
            project_id=project_id,
            build_id=build_id,
            expires_at=None if lifetime is None else now + lifetime,
        )
        return token, secret

    async def _issue(
        self,
        kind: TokenKind,
        description: str,
        *,
        org_id: str | None = None,
        user_id: str | None = None,
        project_id: str | None = None,
        lifetime: timedelta | None = None,
    ) -> tuple[Token, str]:
        async def insert() -> tuple[Token, str]:
            token, secret = self.new_token(
                kind,
                description,
                org_id=org_id,
                user_id=user_id,
                project_id=project_id,
                lifetime=lifetime,
            )
            await self._org_store.insert_token(token)
            return token, secret

        return await with_fresh_ids(insert)

    # Administration

    async def create_org_token(
        self, org_id: str, description: str = "", lifetime: timedelta | None = None
    ) -> tuple[Token, str]:
        require_id(org_id, "org")
        require_lifetime(lifetime, "expires_in")
        if not await self._org_store.get_organizations([org_id]):
            raise NotFound(f"organization {org_id} not found")
        return await self._issue(
            TokenKind.ORG,
            require_description(description, "description"),
            org_id=org_id,
            lifetime=lifetime,
        )

    async def create_user_token(
        self, user_id: str, description: str = "", lifetime: timedelta | None = None
    ) -> tuple[Token, str]:
        require_id(user_id, "user")
        require_lifetime(lifetime, "expires_in")
        if await self._org_store.get_user(user_id) is None:
            raise NotFound(f"user {user_id} not found")
        return await self._issue(
            TokenKind.USER,
            require_description(description, "description"),
            user_id=user_id,
            lifetime=lifetime,
        )

    async def create_machine_token(
        self, description: str = "", lifetime: timedelta | None = None
    ) -> tuple[Token, str]:
        """A token for the agents on BuildKit hosts; it works on the machine service only."""
        require_lifetime(lifetime, "expires_in")
        return await self._issue(
            TokenKind.MACHINE, require_description(description, "description"), lifetime=lifetime
        )

    async def list_standing(self) -> list[Token]:
        """Every unrevoked token but build tokens (which die with their builds), oldest first."""
        return await self._org_store.list_standing_tokens()

    async def revoke(self, token_id: str) -> None:
        """Revoke a token of any kind. Every process checks revocation on every call (there
        is no token cache), so the token stops working at once everywhere."""
        require_id(token_id, "token")
        if not await self._org_store.revoke_token(token_id, self._now()):
            raise NotFound(f"token {token_id} not found (or already revoked)")

    # Project tokens, through the API

    async def list_project_tokens(self, principal: Principal, project_id: str) -> list[Token]:
        project = await self._projects.get_managed(principal, project_id, "list project tokens")
        return await self._org_store.list_project_tokens(project.id)

    async def create_project_token(
        self,
        principal: Principal,
        project_id: str,
        description: str,
        lifetime: timedelta | None = None,
    ) -> tuple[Token, str]:
        require_description(description, "description")
        require_lifetime(lifetime, "expires_in_seconds")
        project = await self._projects.get_managed(principal, project_id, "create project tokens")
        return await self._issue(
            TokenKind.PROJECT,
            description,
            org_id=project.org_id,
            project_id=project.id,
            lifetime=lifetime,
        )

    async def update_project_token(
        self, principal: Principal, token_id: str, description: str
    ) -> None:
        require_description(description, "description")
        token = await self._managed_project_token(principal, token_id, "update project tokens")
        if not await self._org_store.set_token_description(token.id, description):
            raise NotFound(f"token {token_id} not found")

    async def delete_project_token(
        self, principal: Principal, token_id: str, project_id: str = ""
    ) -> None:
        token = await self._managed_project_token(principal, token_id, "delete project tokens")
        if project_id:
            require_id(project_id, "project_id")
            if token.project_id != project_id:
                raise NotFound(f"token {token_id} not found in project {project_id}")
        if not await self._org_store.revoke_token(token.id, self._now()):
            raise NotFound(f"token {token_id} not found")

    async def _managed_project_token(
        self, principal: Principal, token_id: str, action: str
    ) -> Token:
        principal.require_manager(action)
        require_id(token_id, "token_id")
        token = await self._org_store.get_token(token_id)
        if (
            token is None
            or token.kind is not TokenKind.PROJECT
            or token.revoked_at is not None
            or token.org_id not in principal.org_ids
        ):
            raise NotFound(f"token {token_id} not found")
        return token
