"""Running SQL on the database's own driver: each statement compiled once, then executed
directly by sqlite3 or asyncpg.

SQLAlchemy Core still writes every statement, for both databases, from the tables in
schema.py; what it no longer does is run them. Its execution layer (statement cache keys,
events, result metadata, the pool's bookkeeping) cost more than half of the Python time of a
request that reads a token and a build (docs/performance.md). Here a statement becomes SQL
text and the order of its parameters once per dialect (`Query`), and a call is one driver
call: the driver itself keeps the prepared statement (sqlite3's statement cache, asyncpg's
per-connection prepared statements).

Rows come back as the driver's own rows: `row["column"]` works on both (sqlite3.Row,
asyncpg.Record). Statements whose shape depends on the values (an IN list, an UPDATE of the
fields given) may be passed as plain SQLAlchemy statements: they are compiled at each call.

SQLite runs inline on the event loop's thread, on one connection per process (see
SqliteDriver). PostgreSQL runs on an asyncpg pool (see PostgresDriver).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, cast

import asyncpg
from sqlalchemy import BindParameter, bindparam
from sqlalchemy.dialects.postgresql.asyncpg import dialect as postgres_dialect
from sqlalchemy.dialects.sqlite.pysqlite import dialect as sqlite_dialect
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from depot_api.store.errors import ConstraintViolation, StoreUnavailable


class Row(Protocol):
    """A row from either driver (sqlite3.Row, asyncpg.Record): indexed by column name, or by
    position, or unpacked in the order of the statement's columns."""

    def __getitem__(self, key: str | int, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


# Bounds on waiting, in seconds: for SQLite's write lock; for PostgreSQL, to connect, for a
# pooled connection, and for one statement.
SQLITE_LOCK_TIMEOUT_S = 5.0
POSTGRES_CONNECT_TIMEOUT_S = 5.0
POSTGRES_POOL_TIMEOUT_S = 10.0
POSTGRES_COMMAND_TIMEOUT_S = 30.0
POSTGRES_POOL_SIZE = 30

_SQLITE = sqlite_dialect()
_POSTGRES = postgres_dialect()  # type: ignore[no-untyped-call]


class Query:
    """A statement, compiled once per dialect into SQL text and its parameters' order.

    Its `bindparam`s are given at each call, by name; values written into the statement
    (`builds.c.status == "running"`) are constants, taken from it. A list parameter
    (`bindparam("ids", expanding=True)` in an IN) is spread into the text at each call, by
    SQLAlchemy's expansion of the compiled statement, which costs microseconds."""

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def compiled(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _Compiled(
                cast(SQLCompiler, self.statement.compile(dialect=dialect))
            )
        return compiled


class _Compiled:
    __slots__ = ("constants", "expanding", "names", "sql")

    def __init__(self, c: SQLCompiler) -> None:
        self.sql = c.string
        self.names = tuple(c.positiontup or ())
        self.constants = {n: c.binds[n].value for n in self.names if not c.binds[n].required}
        self.expanding = c if c.post_compile_params or c.literal_execute_params else None

    def args(self, params: Mapping[str, Any]) -> tuple[str, Sequence[Any]]:
        if self.expanding is None:
            return self.sql, [params[n] if n in params else self.constants[n] for n in self.names]
        state = self.expanding.construct_expanded_state(dict(params), escape_names=False)
        return state.statement, state.positional_parameters


def bound(*columns: str) -> dict[str, BindParameter[Any]]:
    """`insert(table).values(bound("id", "name"))`: each column's value is the parameter of
    the same name."""
    return {column: bindparam(column) for column in columns}


def _sql_and_args(
    dialect: Dialect, query: Query | ClauseElement, params: Mapping[str, Any]
) -> tuple[str, Sequence[Any]]:
    if isinstance(query, Query):
        return query.compiled(dialect).args(params)
    # A statement shaped by its values: compiled now, its values taken from it.
    c = cast(
        SQLCompiler,
        query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}),
    )
    values = {**c.params, **params}
    return c.string, [values[name] for name in c.positiontup or ()]


class Session(ABC):
    """A connection for the length of one read or one write transaction."""

    @abstractmethod
    async def all(self, query: Query | ClauseElement, /, **params: Any) -> list[Row]: ...

    @abstractmethod
    async def run(self, query: Query | ClauseElement, /, **params: Any) -> int:
        """Execute a statement; the number of rows it changed."""

    @abstractmethod
    async def run_many(self, query: Query, rows: Sequence[Mapping[str, Any]], /) -> None:
        """Execute a statement (with no list parameter) once for each row's parameters, in
        one call of the driver: many inserts cost one round trip, not one each."""

    async def one(self, query: Query | ClauseElement, /, **params: Any) -> Row | None:
        rows = await self.all(query, **params)
        return rows[0] if rows else None

    async def value(self, query: Query | ClauseElement, /, **params: Any) -> Any:
        """The first column of the first row, or None when there is no row."""
        row = await self.one(query, **params)
        return None if row is None else row[0]


class Driver(ABC):
    dialect: Dialect

    @abstractmethod
    def read(self) -> AbstractAsyncContextManager[Session]:
        """`async with driver.read() as session`: single-statement reads, each its own
        transaction (reads here are one SELECT each)."""

    @abstractmethod
    def write(self) -> AbstractAsyncContextManager[Session]:
        """`async with driver.write() as session`: one transaction, committed at the end of
        the block, rolled back if it raises."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def connections(self) -> tuple[int, int]:
        """The connections in use and idle, now."""


def open_driver(url: str) -> Driver:
    """The driver for a normalized database URL (postgresql+asyncpg:// or sqlite+aiosqlite://).
    Nothing connects until the first statement."""
    if url.startswith("postgresql"):
        return PostgresDriver(url)
    # The path as SQLAlchemy reads it (decoded), so that migrations open the same file.
    database = make_url(url).database
    assert database, "a normalized SQLite URL names a file"
    return SqliteDriver(Path(database))


# SQLite


class SqliteDriver(Driver):
    """One sqlite3 connection per process, used inline on the event loop's thread.

    A hand-off to a thread cost 70-140 µs here against a few µs for an indexed read, so
    statements run on the loop (docs/decisions.md). A transaction never yields to the loop
    between BEGIN and COMMIT (store methods await nothing else inside one), so transactions of
    one process never interleave on the shared connection; entering one inside another is a
    bug and raises.

    Writers of other processes: in WAL mode only a writer can be kept waiting, at BEGIN
    IMMEDIATE, while another process holds the write lock. SQLite's own busy handler would
    sleep with the loop blocked, for 1 ms, then 2, 5, 10 …; instead the connection has no busy
    timeout, and a BEGIN that finds the lock taken yields to the loop and tries again soon,
    for at most SQLITE_LOCK_TIMEOUT_S.
    """

    dialect = _SQLITE

    def __init__(self, path: Path, *, lock_timeout: float = SQLITE_LOCK_TIMEOUT_S) -> None:
        self._path = path
        self._lock_timeout = lock_timeout
        self._connection: sqlite3.Connection | None = None
        self._busy = False

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection: sqlite3.Connection | None = None
            try:
                connection = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False, timeout=0
                )
                connection.row_factory = sqlite3.Row
                # WAL: readers never wait for the writer. synchronous=NORMAL in WAL survives a
                # crash of the process (only a power loss may drop the last transactions).
                for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
                    connection.execute(f"PRAGMA {pragma}")
            except sqlite3.Error as e:
                if connection is not None:
                    connection.close()
                raise StoreUnavailable(f"cannot open {self._path}: {e}") from e
            self._connection = connection
        return self._connection

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Session]:
        connection = self._connect()
        self._enter()
        try:
            yield _SqliteSession(connection)
        finally:
            self._busy = False

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Session]:
        connection = self._connect()
        await self._begin_immediate(connection)
        try:
            yield _SqliteSession(connection)
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as e:
                raise StoreUnavailable(f"commit failed: {e}") from e
        finally:
            self._busy = False
            # After an error SQLite may have ended the transaction itself (a full disk, an
            # I/O error): a ROLLBACK then would fail and hide the error that matters.
            if connection.in_transaction:
                self._roll_back(connection)

    def _roll_back(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            # A connection that cannot roll back is not trusted again: the next call opens
            # another, and SQLite discards what this one left unfinished.
            connection.close()
            self._connection = None

    async def _begin_immediate(self, connection: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self._lock_timeout
        pause = 0.0001
        while True:
            self._enter()
            try:
                connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.Error as e:
                self._busy = False
                if getattr(e, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                    raise StoreUnavailable(f"cannot begin a write: {e}") from e
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"another process held the write lock for {self._lock_timeout:g}s"
                    ) from e
            # Another process writes: let this one's other calls run meanwhile.
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.005)

    def connections(self) -> tuple[int, int]:
        if self._connection is None:
            return 0, 0
        return (1, 0) if self._busy else (0, 1)

    def _enter(self) -> None:
        if self._busy:
            raise RuntimeError("a SQLite statement inside another's transaction")
        self._busy = True

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _SqliteSession(Session):
    __slots__ = ("_connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def all(self, query: Query | ClauseElement, /, **params: Any) -> list[Row]:
        sql, args = _sql_and_args(_SQLITE, query, params)
        try:
            return self._connection.execute(sql, args).fetchall()
        except sqlite3.IntegrityError as e:
            raise ConstraintViolation(str(e)) from e
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from e

    async def run_many(self, query: Query, rows: Sequence[Mapping[str, Any]], /) -> None:
        if not rows:
            return
        compiled = query.compiled(_SQLITE)
        try:
            self._connection.executemany(compiled.sql, [compiled.args(row)[1] for row in rows])
        except sqlite3.IntegrityError as e:
            raise ConstraintViolation(str(e)) from e
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from e

    async def run(self, query: Query | ClauseElement, /, **params: Any) -> int:
        sql, args = _sql_and_args(_SQLITE, query, params)
        try:
            return self._connection.execute(sql, args).rowcount
        except sqlite3.IntegrityError as e:
            raise ConstraintViolation(str(e)) from e
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from e


# PostgreSQL

# What a failed call of asyncpg may raise, besides a broken constraint.
_POSTGRES_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresDriver(Driver):
    """An asyncpg pool, opened at the first statement (the application is built before its
    event loop runs). asyncpg prepares each statement once per connection and keeps it.

    A pooled connection that PostgreSQL closed while idle (a restart, pg_terminate_backend) is
    replaced when it is taken from the pool: asyncpg's pool checks whether it has seen the
    socket close, which costs no round trip. A connection cut silently fails its statement,
    and that call gets StoreUnavailable.
    """

    dialect = _POSTGRES

    def __init__(self, url: str) -> None:
        self._dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=0,
                        max_size=POSTGRES_POOL_SIZE,
                        timeout=POSTGRES_CONNECT_TIMEOUT_S,
                        command_timeout=POSTGRES_COMMAND_TIMEOUT_S,
                    )
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            pool = await self._get_pool()
            connection = await pool.acquire(timeout=POSTGRES_POOL_TIMEOUT_S)
        except _POSTGRES_ERRORS as e:
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from e
        try:
            yield connection
        finally:
            await pool.release(connection)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Session]:
        async with self._connection() as connection:
            yield _PostgresSession(connection)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Session]:
        async with self._connection() as connection:
            transaction = connection.transaction()
            try:
                await transaction.start()
            except _POSTGRES_ERRORS as e:
                raise StoreUnavailable(f"{type(e).__name__}: {e}") from e
            try:
                yield _PostgresSession(connection)
            except BaseException:
                if not connection.is_closed():
                    # A connection that fails to roll back is closed by the pool on release;
                    # the error that matters is the one raised in the block.
                    with contextlib.suppress(*_POSTGRES_ERRORS):
                        await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except _POSTGRES_ERRORS as e:
                raise StoreUnavailable(f"commit failed: {type(e).__name__}: {e}") from e

    def connections(self) -> tuple[int, int]:
        if self._pool is None:
            return 0, 0
        idle = self._pool.get_idle_size()
        return self._pool.get_size() - idle, idle

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class _PostgresSession(Session):
    __slots__ = ("_connection",)

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def all(self, query: Query | ClauseElement, /, **params: Any) -> list[Row]:
        sql, args = _sql_and_args(_POSTGRES, query, params)
        try:
            return await self._connection.fetch(sql, *args)  # type: ignore[no-any-return]
        except asyncpg.IntegrityConstraintViolationError as e:
            raise ConstraintViolation(e.constraint_name or str(e)) from e
        except _POSTGRES_ERRORS as e:
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from e

    async def run_many(self, query: Query, rows: Sequence[Mapping[str, Any]], /) -> None:
        if not rows:
            return
        compiled = query.compiled(_POSTGRES)
        try:
            await self._connection.executemany(
                compiled.sql, [compiled.args(row)[1] for row in rows]
            )
        except asyncpg.IntegrityConstraintViolationError as e:
            raise ConstraintViolation(e.constraint_name or str(e)) from e
        except _POSTGRES_ERRORS as e:
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from e

    async def run(self, query: Query | ClauseElement, /, **params: Any) -> int:
        sql, args = _sql_and_args(_POSTGRES, query, params)
        try:
            status = await self._connection.execute(sql, *args)
        except asyncpg.IntegrityConstraintViolationError as e:
            raise ConstraintViolation(e.constraint_name or str(e)) from e
        except _POSTGRES_ERRORS as e:
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from e
        # "UPDATE 3", "INSERT 0 1", "DELETE 0": the count is the last word.
        count = status.rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0
