"""Opening a database: engines, SQLite's settings, migrations, and a cross-process lock for the
work every server does once at start."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from depot_api.store.sql import SqlStore

_MIGRATIONS = Path(__file__).parent / "migrations"

# How long a SQLite connection waits for another writer before giving up (and the caller
# getting `unavailable`).
SQLITE_BUSY_TIMEOUT_MS = 5000

# Bounds on waiting for PostgreSQL, in seconds: to connect, for a pooled connection, and for
# one statement.
POSTGRES_CONNECT_TIMEOUT_S = 5
POSTGRES_POOL_TIMEOUT_S = 10
POSTGRES_COMMAND_TIMEOUT_S = 30

# Any constant works; it names the advisory lock that serialises start-up work on PostgreSQL.
_STARTUP_LOCK_KEY = 0x64_65_70_6F_74  # "depot"


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(data_dir / 'depot-api.sqlite3').resolve()}"


def normalize_url(url: str) -> str:
    """Accept the URLs people write (postgresql://, postgres://, sqlite:///) and pick the
    asynchronous driver for each."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}")


def create_engine(url: str) -> AsyncEngine:
    url = normalize_url(url)
    if url.startswith("postgresql"):
        # No pre-ping: it cost a round trip before every transaction. A connection that died
        # while idle is found without one instead (see _replace_closed_connections). The pool
        # is per process.
        engine = create_async_engine(
            url,
            pool_size=10,
            max_overflow=20,
            pool_timeout=POSTGRES_POOL_TIMEOUT_S,
            # Bounded waits: an unreachable database makes callers wait seconds, not minutes.
            connect_args={
                "timeout": POSTGRES_CONNECT_TIMEOUT_S,
                "command_timeout": POSTGRES_COMMAND_TIMEOUT_S,
            },
        )
        event.listen(engine.sync_engine, "checkout", _replace_closed_connections)
        return engine
    engine = create_async_engine(url)
    configure_sqlite(engine.sync_engine)
    return engine


def _replace_closed_connections(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection that PostgreSQL has closed while it sat idle (a restart, or
    an operator ending sessions), so that the pool replaces it before any statement runs.

    PostgreSQL says goodbye on the socket when it ends a session, and asyncpg marks its
    connection closed as soon as the event loop reads that: asking costs no round trip, unlike
    SQLAlchemy's pre-ping. Raising DisconnectionError here makes the pool discard the
    connection and check out another (SQLAlchemy's documented custom pessimistic check).
    A connection cut without a goodbye (a network partition) still fails its first
    statement, and that call answers `unavailable`.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the database closed this pooled connection")


def configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, foreign keys, and transactions that SQLAlchemy begins itself.

    Python's sqlite3 module would otherwise begin transactions lazily and DEFERRED, so two
    writers that both read first can deadlock on the upgrade to a write lock. Writes here
    begin IMMEDIATE (asked for with the `depot_write` execution option) and take the write
    lock up front, waiting up to the busy timeout for it.

    synchronous=NORMAL in WAL mode survives a crash of the process (what is acknowledged is
    in the operating system's hands); only a power loss may drop the last transactions.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("depot_single_statement", False):
            return  # one statement is its own transaction in SQLite's autocommit mode
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("depot_write", False) else "BEGIN")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there already)."""
    async with engine.execution_options(depot_write=True).begin() as conn:
        await conn.run_sync(_upgrade)


def head_revision() -> str:
    """The newest migration's revision: the schema version `migrate` brings a database to."""
    head = ScriptDirectory(str(_MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


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


async def open_store(url: str, *, run_migrations: bool = True) -> SqlStore:
    engine = create_engine(url)
    if run_migrations:
        async with startup_lock(engine):
            await migrate(engine)
    return SqlStore(engine)
