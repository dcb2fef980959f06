"""The Store interface: everything the domain may ask of persistence.

Contract for every implementation:
- Each method is one transaction: it happens whole or not at all.
- Reads of projects, and of builds through their project, never return a deleted project's
  data.
- Conditional writes (finish_build) are decided inside the database, so concurrent callers in
  any number of processes see exactly one winner.
- Failures are reported with store.errors only; a caller may retry StoreUnavailable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from depot_api.models import (
    Build,
    BuildStatus,
    CachePolicy,
    Hardware,
    Organization,
    Project,
    Token,
    User,
)

# A keyset position: (created_at in epoch microseconds, id).
Position = tuple[int, str]


class Store(Protocol):
    async def close(self) -> None:
        """Release every connection."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database is reachable and migrated."""

    # Organizations and users

    async def insert_organization(self, org: Organization) -> None: ...

    async def count_organizations(self) -> int: ...

    async def get_organizations(self, org_ids: list[str]) -> list[Organization]:
        """The named organizations that exist, oldest first."""

    async def insert_user(self, user: User) -> None: ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def add_membership(self, user_id: str, org_id: str, at: datetime) -> bool:
        """Make the user a member; False when they already were."""

    async def org_ids_of_user(self, user_id: str) -> list[str]: ...

    # Tokens

    async def insert_token(self, token: Token) -> None:
        """Raises DuplicateKey on an ID or secret-hash clash."""

    async def find_token(self, secret_hash: str) -> Token | None:
        """The token with this hash, revoked or not."""

    async def get_token(self, token_id: str) -> Token | None: ...

    async def list_project_tokens(self, project_id: str) -> list[Token]:
        """The project's live (unrevoked) project tokens, oldest first."""

    async def set_token_description(self, token_id: str, description: str) -> bool:
        """False when the token does not exist or is revoked."""

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        """False when the token does not exist or was already revoked."""

    # Projects

    async def insert_project(self, project: Project) -> None:
        """Raises NameTaken when the organization has a live project of that name."""

    async def get_project(self, project_id: str) -> Project | None: ...

    async def list_projects(
        self, org_ids: list[str], after: Position | None, limit: int
    ) -> list[Project]:
        """Live projects of these organizations, oldest first, strictly after `after`."""

    async def update_project(
        self,
        project_id: str,
        *,
        name: str | None = None,
        region_id: str | None = None,
        hardware: Hardware | None = None,
        cache_policy: CachePolicy | None = None,
    ) -> Project | None:
        """Change the given fields; None when there is no live project. Raises NameTaken."""

    async def delete_project(self, project_id: str, at: datetime) -> bool:
        """Mark the project deleted and revoke its tokens; False when it was not live."""

    async def bump_cache_generation(self, project_id: str) -> int | None:
        """Start a new cache generation; returns it, or None when there is no live project."""

    # Builds

    async def insert_build(self, build: Build, token: Token) -> None:
        """Store a new build with its build token. Raises DuplicateKey on a clash."""

    async def get_build(self, build_id: str) -> Build | None:
        """The build, unless it does not exist or its project was deleted."""

    async def list_builds(
        self, project_id: str, before: Position | None, limit: int
    ) -> list[Build]:
        """The project's builds, newest first, strictly before `before`."""

    async def finish_build(
        self, build_id: str, status: BuildStatus, at: datetime, error_message: str | None
    ) -> Build | None:
        """Move a RUNNING build to `status`; if it had already ended, change nothing.

        Returns the build as it is afterwards (whichever finish won), or None when the build
        does not exist.
        """
