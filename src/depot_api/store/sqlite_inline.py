"""SQLite statements run inline, on the event loop's thread.

aiosqlite runs every statement on a helper thread and hands the result back through the
event loop. On these machines one hand-off costs 70-140 µs, and SQLAlchemy's async layer
makes several per transaction, so a request's two or three small transactions spent about
2 ms waiting for threads while SQLite needed a few microseconds per indexed read
(bench/README.md, "SQLite and threads"). A local SQLite file answers faster than a thread
hand-off, so SqlStore runs SQLite statements synchronously instead.

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

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection


class InlineEngine:
    """The part of AsyncEngine that SqlStore uses, over a synchronous SQLite engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def for_url(cls, url: str | URL) -> InlineEngine:
        # Imported here: depot_api.store.engine imports the store, which imports this module.
        from depot_api.store.engine import configure_sqlite

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
