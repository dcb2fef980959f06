"""SQLite: the settings of every connection, and statements run inline on the event loop.

aiosqlite runs every statement on a helper thread and hands the result back through the
event loop. On these machines one hand-off costs 70-140 µs, and SQLAlchemy's async layer
makes several per transaction, so a request's two or three small transactions spent about
2 ms waiting for threads while SQLite needed a few microseconds per indexed read
(bench/README.md, "SQLite and threads"). A local SQLite file answers faster than a thread
hand-off, so the store runs SQLite statements synchronously instead (InlineEngine).

What this costs: a statement blocks the event loop while it runs. Reads are microseconds.
A write that finds another process holding SQLite's write lock waits for it (up to the busy
timeout) with the loop blocked; write transactions here hold the lock for microseconds
(WAL, synchronous=NORMAL, no fsync at commit), so the wait is short. Each transaction runs to
its end without yielding to the loop, so transactions of one process never interleave.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection

# How long a SQLite connection waits for another writer before giving up (and the caller
# getting `unavailable`).
SQLITE_BUSY_TIMEOUT_MS = 5000


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


class InlineEngine:
    """The part of AsyncEngine that the store uses, over a synchronous SQLite engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def for_url(cls, url: str | URL) -> InlineEngine:
        sync_url = make_url(url).set(drivername="sqlite+pysqlite")
        engine = create_engine(sync_url)
        configure_sqlite(engine)
        return cls(engine)

    def execution_options(self, **options: Any) -> InlineEngine:
        return InlineEngine(self._engine.execution_options(**options))

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        with self._engine.connect() as conn:
            yield _as_async(conn)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        with self._engine.begin() as conn:
            yield _as_async(conn)

    async def dispose(self) -> None:
        self._engine.dispose()


class _InlineConnection:
    """AsyncConnection's execute, scalar and exec_driver_sql, done at once."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.dialect = conn.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.execute(statement, parameters)

    async def scalar(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.scalar(statement, parameters)

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        return self._conn.exec_driver_sql(statement, parameters)


def _as_async(conn: Connection) -> AsyncConnection:
    # The store's queries are written against AsyncConnection and use only the methods above;
    # this stands in for it, so one body of SQL serves both databases.
    return cast(AsyncConnection, _InlineConnection(conn))
