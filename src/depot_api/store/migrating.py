"""Bringing a database's schema to the newest revision (Alembic; the revisions are in
store/migrations/), and the lock that lets one process at a time do its start-up work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from depot_api.store.errors import DatabaseUnusable

_MIGRATIONS = Path(__file__).parent / "migrations"

# Any constant works; it names the advisory lock that serialises start-up work on PostgreSQL.
_STARTUP_LOCK_KEY = 0x64_65_70_6F_74  # "depot"


@dataclass(frozen=True)
class Migration:
    """What migrate() did: the schema's revision before (None: there was no schema) and after."""

    before: str | None
    after: str


async def migrate(engine: AsyncEngine) -> Migration:
    """Bring the schema to the newest revision (a no-op when it is there already)."""
    async with engine.execution_options(depot_write=True).begin() as conn:
        before = await conn.run_sync(_upgrade)
    return Migration(before=before, after=head_revision())


def head_revision() -> str:
    """The newest migration's revision: the schema version `migrate` brings a database to."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


def _scripts() -> ScriptDirectory:
    return ScriptDirectory(str(_MIGRATIONS))


def _upgrade(connection: Connection) -> str | None:
    """Upgrade to the newest revision; return the revision the schema was at."""
    before = MigrationContext.configure(connection).get_current_revision()
    if before is not None and before not in {r.revision for r in _scripts().walk_revisions()}:
        # Alembic would fail with "Can't locate revision"; say what that means here.
        raise DatabaseUnusable(
            f"its schema is at revision {before}, which this version of depot-api does not "
            f"know (it knows up to {head_revision()}): a newer version has migrated it"
        )
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    return before


@asynccontextmanager
async def startup_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Serialise start-up work (migrations, the first organization) across processes.

    On PostgreSQL, servers on several hosts may start at once: a session advisory lock lets
    one at a time through. On SQLite the write transactions themselves serialise.
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    async with engine.connect() as conn:
        await conn.exec_driver_sql(f"SELECT pg_advisory_lock({_STARTUP_LOCK_KEY})")
        await conn.commit()
        try:
            yield
        finally:
            await conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_STARTUP_LOCK_KEY})")
            await conn.commit()
