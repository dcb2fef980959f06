"""Opening a database: URLs, engines, SQLite's settings, migrations, a cross-process lock for the
work every server does once at start, and messages that say why a database cannot be used."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from depot_api.store.errors import StoreUnavailable
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

# How messages describe the accepted URLs.
_URL_FORMS = "postgresql://user:password@host:5432/db (or postgres://), or sqlite:///path"

# PostgreSQL's error codes (SQLSTATE) for a database that does not exist, and for a login
# refused (no such role, a wrong password).
_NO_SUCH_DATABASE = "3D000"
_REFUSED_LOGIN = ("28000", "28P01")

# Any constant works; it names the advisory lock that serialises start-up work on PostgreSQL.
_STARTUP_LOCK_KEY = 0x64_65_70_6F_74  # "depot"


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(data_dir / 'depot-api.sqlite3').resolve()}"


def normalize_url(url: str) -> str:
    """Accept the URLs people write (postgresql://, postgres://, sqlite:///) and pick the
    asynchronous driver for each. ValueError says what is wrong with any other."""
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ArgumentError, ValueError):
        raise ValueError(f"must be a database URL such as {_URL_FORMS}") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"names port {port}; a port is a whole number from 1 to 65535")
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            # Each process would have a database of its own, forgotten when it exits.
            raise ValueError("must name a SQLite file: sqlite:///path/to/file")
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    raise ValueError(f"uses the unsupported scheme {parsed.drivername}://; use {_URL_FORMS}")


def shown_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not a URL at all; shown as given unless it might hold a password.
        return url if "@" not in url else "(not shown: it may hold a password)"


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


class DatabaseUnusable(Exception):
    """The database cannot be used: unreachable, missing, refusing the connection, or at a
    schema this version does not know. The message says which and what to do; it does not
    name the setting (the caller knows how the user gave it)."""


@asynccontextmanager
async def explained_errors(url: str) -> AsyncIterator[None]:
    """Turn a failure to reach or use the database at url into DatabaseUnusable, with a
    message that names the server and, where it can, says what to do."""
    try:
        yield
    except DatabaseUnusable:
        raise
    except (OSError, DBAPIError, SQLAlchemyTimeoutError, StoreUnavailable) as error:
        raise DatabaseUnusable(_explain(url, error)) from error


def _explain(url: str, error: BaseException) -> str:
    cause = _driver_error(error)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"cannot use the SQLite database {parsed.database}: {cause}"
    host, port = parsed.host or "localhost", parsed.port or 5432
    where = f"PostgreSQL at {host}:{port}"
    sqlstate = getattr(cause, "sqlstate", None)  # PostgreSQL's error code, as drivers give it
    if sqlstate == _NO_SUCH_DATABASE:
        hint = "create it first"
        if parsed.database:
            user = f" -U {parsed.username}" if parsed.username else ""
            hint += f" (createdb -h {host} -p {port}{user} {parsed.database})"
        return f"{cause} on {where}; {hint}"
    if sqlstate in _REFUSED_LOGIN:
        return f"{where} refused the connection: {cause}"
    if isinstance(cause, TimeoutError):
        return f"cannot reach {where}: no answer within {POSTGRES_CONNECT_TIMEOUT_S} s"
    if isinstance(cause, socket.gaierror):
        return f"cannot reach {where}: cannot resolve {host} ({cause.strerror})"
    if isinstance(cause, OSError):
        reason = os.strerror(cause.errno) if cause.errno else str(cause)
        return f"cannot reach {where}: {reason}"
    return f"{where} failed: {cause}"


def _driver_error(error: BaseException) -> BaseException:
    """The driver's own exception beneath SQLAlchemy's and the store's wrappers."""
    while True:
        below = error.orig if isinstance(error, DBAPIError) else error.__cause__
        if below is None:
            return error
        error = below


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
    """A store over the database at url, migrated first unless told not to.

    Raises DatabaseUnusable when the database cannot be reached or used."""
    engine = create_engine(url)
    try:
        if run_migrations:
            async with explained_errors(url), startup_lock(engine):
                await migrate(engine)
    except DatabaseUnusable:
        await engine.dispose()
        raise
    return SqlStore(engine)
