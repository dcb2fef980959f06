"""The connection to the database and the one way queries reach it.

Every store query runs inside `Database.read()` or `Database.write()`: one transaction on a
pooled connection, with the database's own failures reported as StoreUnavailable. This module
is the store's only plumbing between SQL and the drivers; the aggregates (orgs, projects,
builds, machines) hold nothing but their statements.

Also here: the engines (PostgreSQL's pool and bounded waits; SQLite's are in store.sqlite), and
the messages that say why a database cannot be used at all (explained_errors).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from depot_api.store.errors import DatabaseUnusable, StoreUnavailable
from depot_api.store.sqlite import InlineEngine, configure_sqlite
from depot_api.store.urls import normalize_url

# Bounds on waiting for PostgreSQL, in seconds: to connect, for a pooled connection, and for
# one statement.
POSTGRES_CONNECT_TIMEOUT_S = 5
POSTGRES_POOL_TIMEOUT_S = 10
POSTGRES_COMMAND_TIMEOUT_S = 30

# PostgreSQL's error codes (SQLSTATE) for a database that does not exist, and for a login
# refused (no such role, a wrong password).
_NO_SUCH_DATABASE = "3D000"
_REFUSED_LOGIN = ("28000", "28P01")


class Database:
    """One database: its engines, and transactions on them. Connects on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        # The asynchronous engine: migrations, the start-up lock, and PostgreSQL's queries.
        self.engine = create_engine(url)
        # SQLite's statements run inline: faster than aiosqlite's thread hand-offs (see there).
        self._engine: AsyncEngine | InlineEngine = (
            InlineEngine.for_url(self.engine.url)
            if self.engine.dialect.name == "sqlite"
            else self.engine
        )
        # Writes ask SQLite for the write lock up front (BEGIN IMMEDIATE), so two writers never
        # deadlock upgrading read locks; see depot_api.store.sqlite.
        self._write_engine = self._engine.execution_options(depot_write=True)
        # Every read is a single SELECT, which needs no BEGIN and ROLLBACK around it: on
        # SQLite the statement is its own transaction, on PostgreSQL autocommit makes it one
        # round trip instead of three.
        self._read_engine = (
            self._engine.execution_options(depot_single_statement=True)
            if isinstance(self._engine, InlineEngine)
            else self._engine.execution_options(isolation_level="AUTOCOMMIT")
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one SELECT (it is its own transaction)."""
        async with _translated(), self._read_engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits when the block ends and rolls back if it raises."""
        async with _translated(), self._write_engine.begin() as conn:
            yield conn

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database is reachable, readable and migrated."""
        async with self.read() as conn:
            await conn.exec_driver_sql("SELECT version_num FROM alembic_version")

    async def close(self) -> None:
        """Release every connection."""
        await self._engine.dispose()
        await self.engine.dispose()


def create_engine(url: str) -> AsyncEngine:
    """An asynchronous engine for the URL, with the settings its database needs. Tests use it
    to look at the database directly."""
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


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    """Report the database's own operational failures as StoreUnavailable. Integrity errors
    pass through: the aggregate that ran the statement knows what they mean."""
    try:
        yield
    except IntegrityError:
        raise
    except (OperationalError, DBAPIError, SQLAlchemyTimeoutError, OSError) as e:
        raise StoreUnavailable(type(e).__name__) from e


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
