"""The Store: one database seen as its aggregates, and open_store, the one way to make it."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from depot_api.store.builds import SqlBuildStore
from depot_api.store.connections import SqlConnectionStore
from depot_api.store.database import Database
from depot_api.store.insights import SqlInsightStore
from depot_api.store.interface import (
    BuildStore,
    ConnectionStore,
    InsightStore,
    MachineStore,
    OrgStore,
    ProjectStore,
    SessionStore,
    ShareStore,
    TrustPolicyStore,
    UsageStore,
)
from depot_api.store.machines import SqlMachineStore
from depot_api.store.migrating import Migration, migrate, startup_lock
from depot_api.store.orgs import SqlOrgStore
from depot_api.store.projects import SqlProjectStore
from depot_api.store.sessions import SqlSessionStore
from depot_api.store.shares import SqlShareStore
from depot_api.store.trust_policies import SqlTrustPolicyStore
from depot_api.store.usage import SqlUsageStore


class Store:
    """Persistence, by aggregate: `orgs` (organizations, users, tokens), `projects` (with
    their CAs), `builds` (with health and status reports), `machines` (with bindings and
    endpoints), `connections` (client connections to machines' front doors), `trust_policies`
    (the CI identities that may create builds), `insights` (build steps, logs and counters),
    `usage` (figures per project), `shares` (shared build links). Each method of each is one
    transaction (store.interface has the contracts)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.orgs: OrgStore = SqlOrgStore(database)
        self.projects: ProjectStore = SqlProjectStore(database)
        self.builds: BuildStore = SqlBuildStore(database)
        self.machines: MachineStore = SqlMachineStore(database)
        self.connections: ConnectionStore = SqlConnectionStore(database)
        self.trust_policies: TrustPolicyStore = SqlTrustPolicyStore(database)
        self.insights: InsightStore = SqlInsightStore(database)
        self.usage: UsageStore = SqlUsageStore(database)
        self.shares: ShareStore = SqlShareStore(database)
        self.sessions: SessionStore = SqlSessionStore(database)

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database is reachable and migrated."""
        await self.database.ping()

    async def close(self) -> None:
        """Release every connection."""
        await self.database.close()

    async def migrate(self) -> Migration:
        """Bring the schema to the newest revision (a no-op when it is there already). Run it
        inside startup_lock() when other processes may start at the same time."""
        return await migrate(self.database.engine)

    def startup_lock(self) -> AbstractAsyncContextManager[None]:
        """Held by one process at a time, across hosts: for migrations and the first
        organization."""
        return startup_lock(self.database.engine)


def open_store(url: str) -> Store:
    """The store over the database at url (any URL store.urls.normalize_url accepts).

    Nothing connects yet: the first call does, so a server starts while its database is
    away and answers `unavailable` until it is back. Start-up work migrates explicitly:
    `async with store.startup_lock(): await store.migrate()`. ValueError for a URL that is not
    a database URL."""
    return Store(Database(url))
