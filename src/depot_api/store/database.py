"""The database: the one way store statements reach it, and the engine that migrates it.

Every store statement runs inside `Database.read()` or `Database.write()`, which yield a
driver Session (store.driver): one SELECT, or one transaction, on the database's own driver
(sqlite3 inline on the event loop, or an asyncpg pool), with the database's failures reported
as StoreUnavailable and broken constraints as ConstraintViolation. The aggregates (orgs,
projects, builds, machines) hold nothing but their statements.

SQLAlchemy's AsyncEngine remains for what Alembic needs: migrations and the start-up lock
(store.migrating). Tests use it (create_engine) to look at the database directly. Also here:
the messages that say why a database cannot be used at all (explained_errors).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from depot_api import tracing
from depot_api.metrics import DB_CONNECTIONS, TRANSACTION_COMMITTED, TRANSACTION_ROLLED_BACK
from depot_api.store.driver import (
    POSTGRES_COMMAND_TIMEOUT_S,
    POSTGRES_CONNECT_TIMEOUT_S,
    SQLITE_LOCK_TIMEOUT_S,
    Query,
    Session,
    open_driver,
)
from depot_api.store.errors import DatabaseUnusable, StoreUnavailable
from depot_api.store.urls import normalize_url

# PostgreSQL's error codes (SQLSTATE) for a database that does not exist, and for a login
# refused (no such role, a wrong password).
_NO_SUCH_DATABASE = "3D000"
_REFUSED_LOGIN = ("28000", "28P01")

# Reachable, readable, and migrated: Alembic's table is there.
_SCHEMA_VERSION = Query(text("SELECT version_num FROM alembic_version"))


class Database:
    """One database: its driver for the store's statements, its engine for migrations.
    Connects on first use."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self._driver = open_driver(self.url)
        # "sqlite" or "postgresql": for the few statements each database writes its own way.
        self.dialect_name: str = self._driver.dialect.name
        # Migrations and the start-up lock only (store.migrating).
        self.engine = create_engine(self.url)

    def read(self) -> AbstractAsyncContextManager[Session]:
        """A session for single statements, each its own transaction: reads, and on
        PostgreSQL a write that is one statement (SQLite's writers wait for the write lock
        in write() only). A span when tracing is on; not timed: reads are the hot path's most
        frequent step, and a histogram there cost a measurable share of a call (bench/)."""
        if tracing.enabled():
            return self._traced_read()
        return self._driver.read()

    @asynccontextmanager
    async def _traced_read(self) -> AsyncIterator[Session]:
        with tracing.transaction_span("read", self.dialect_name):
            async with self._driver.read() as session:
                yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Session]:
        """A transaction that commits when the block ends and rolls back if it raises.
        Timed (metrics.py), and a span when tracing is on."""
        committed = False
        with tracing.transaction_span("write", self.dialect_name):
            started = time.perf_counter()
            try:
                async with self._driver.write() as session:
                    yield session
                committed = True  # past the driver's block: the commit is done
            finally:
                took = time.perf_counter() - started
                (TRANSACTION_COMMITTED if committed else TRANSACTION_ROLLED_BACK).observe(took)

    def sample_connections(self) -> None:
        """Put the connections in use and idle into their gauge (metrics.py)."""
        in_use, idle = self._driver.connections()
        DB_CONNECTIONS.labels("in_use").set(in_use)
        DB_CONNECTIONS.labels("idle").set(idle)

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database is reachable, readable and migrated."""
        async with self.read() as session:
            await session.value(_SCHEMA_VERSION)

    async def close(self) -> None:
        """Release every connection."""
        await self._driver.close()
        await self.engine.dispose()


def create_engine(url: str) -> AsyncEngine:
    """A SQLAlchemy engine for the URL, for migrations and the start-up lock; tests use it to
    look at the database directly. It keeps no connection between uses (NullPool): it is used
    at start, and the store's statements go through the driver's own connections."""
    url = normalize_url(url)
    if url.startswith("postgresql"):
        # Bounded waits: an unreachable database makes start-up fail in seconds, not minutes.
        return create_async_engine(
            url,
            poolclass=NullPool,
            connect_args={
                "timeout": POSTGRES_CONNECT_TIMEOUT_S,
                "command_timeout": POSTGRES_COMMAND_TIMEOUT_S,
            },
        )
    engine = create_async_engine(url, poolclass=NullPool)
    configure_sqlite(engine.sync_engine)
    return engine


def configure_sqlite(engine: Engine) -> None:
    """The settings of the engine's SQLite connections: WAL (a setting of the file, which the
    first migration creates), a busy timeout, foreign keys, and transactions that SQLAlchemy
    begins itself.

    Python's sqlite3 module would otherwise begin transactions lazily and DEFERRED, so two
    processes migrating at once could deadlock on the upgrade to a write lock. A transaction
    asked for with the `depot_write` execution option (migrations) begins IMMEDIATE and waits
    up to the busy timeout for the write lock. (The store's own connection, in store.driver,
    sets the same pragmas and waits for the lock without blocking the event loop.)
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_LOCK_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("depot_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


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
        return f"cannot reach {where}: no answer within {POSTGRES_CONNECT_TIMEOUT_S:g} s"
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
