"""Organizations, users and memberships; and the first start's bootstrap."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from depot_api.domain.errors import AlreadyExists, NotFound
from depot_api.domain.ids import new_id, require_id, with_fresh_ids
from depot_api.domain.principal import Principal
from depot_api.domain.text import require_name
from depot_api.domain.tokens import Tokens
from depot_api.models import Organization, User
from depot_api.store.interface import OrgStore


class Organizations:
    def __init__(self, org_store: OrgStore, tokens: Tokens, *, now: Callable[[], datetime]) -> None:
        self._org_store = org_store
        self._tokens = tokens
        self._now = now

    async def visible_to(self, principal: Principal) -> list[Organization]:
        principal.require_manager("list organizations")
        return await self._org_store.get_organizations(sorted(principal.org_ids))

    async def names(self, org_ids: set[str]) -> dict[str, str]:
        """Organization names by ID, for showing alongside resources the caller may see."""
        return {
            org.id: org.name for org in await self._org_store.get_organizations(sorted(org_ids))
        }

    # Administration: run by `depot-api admin` directly against the data directory.

    async def all(self) -> list[Organization]:
        """Every organization, oldest first."""
        return await self._org_store.list_organizations()

    async def create(self, name: str) -> Organization:
        name = require_name(name, "name")

        async def insert() -> Organization:
            org = Organization(id=new_id(), name=name, created_at=self._now())
            await self._org_store.insert_organization(org)
            return org

        return await with_fresh_ids(insert)

    async def create_user(self, name: str) -> User:
        name = require_name(name, "name")

        async def insert() -> User:
            user = User(id=new_id(), name=name, created_at=self._now())
            await self._org_store.insert_user(user)
            return user

        return await with_fresh_ids(insert)

    async def add_member(self, user_id: str, org_id: str) -> None:
        require_id(user_id, "user")
        require_id(org_id, "org")
        if await self._org_store.get_user(user_id) is None:
            raise NotFound(f"user {user_id} not found")
        if not await self._org_store.get_organizations([org_id]):
            raise NotFound(f"organization {org_id} not found")
        if not await self._org_store.add_membership(user_id, org_id, self._now()):
            raise AlreadyExists(f"user {user_id} is already a member of organization {org_id}")

    async def bootstrap(self) -> str | None:
        """On an empty database, create an organization and an org token; return its secret.

        Returns None when the database already has an organization.
        """
        if await self._org_store.count_organizations() > 0:
            return None
        org = await self.create("default")
        _, secret = await self._tokens.create_org_token(org.id, "initial organization token")
        return secret
