"""Databases for tests: a fresh SQLite file, or a fresh PostgreSQL database, per test.

PostgreSQL is expected on 127.0.0.1:5432 with trust authentication (`.ci/run` starts it);
DEPOT_API_TEST_POSTGRES overrides the server URL. If it cannot be reached, tests fail: they
never skip.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from depot_api.store.migrating import head_revision
from depot_api.store.urls import sqlite_url

BACKENDS = ("sqlite", "postgresql")
POSTGRES_SERVER = os.environ.get(
    "DEPOT_API_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def database(backend: str, data_dir: Path) -> Iterator[str]:
    """A URL of an empty database of the given backend, removed afterwards."""
    if backend == "sqlite":
        yield sqlite_url(data_dir)
        return
    name = f"depot_test_{secrets.token_hex(6)}"
    _execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_SERVER).set(database=name).render_as_string(hide_password=False)
    finally:
        _execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Migrated, emptied PostgreSQL databases ready for the next test. Creating a database costs
# about 0.3 s and migrating it as much again; emptying one with TRUNCATE costs a few ms.
_reusable: list[str] = []


@contextmanager
def reusable_database(backend: str, data_dir: Path) -> Iterator[str]:
    """Like database(), but a PostgreSQL database may be one an earlier test used: migrated to
    the newest schema and emptied of every row. Tests of migrations use database()."""
    if backend == "sqlite":
        yield sqlite_url(data_dir)
        return
    if _reusable:
        name = _reusable.pop()
    else:
        name = f"depot_test_{secrets.token_hex(6)}"
        _execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_SERVER).set(database=name).render_as_string(hide_password=False)
    finally:
        if _run(_emptied(name)):
            _reusable.append(name)
        else:
            _execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_reusable_databases() -> None:
    while _reusable:
        _execute(f'DROP DATABASE IF EXISTS "{_reusable.pop()}" WITH (FORCE)')


async def _emptied(name: str) -> bool:
    """Empty a database at the newest schema for reuse; False if it is not fit for reuse."""
    url = make_url(POSTGRES_SERVER).set(database=name).render_as_string(hide_password=False)
    connection = await asyncpg.connect(url, timeout=10)
    try:
        # Sessions the test left behind would hold locks that TRUNCATE waits for.
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        tables = [
            r["tablename"]
            for r in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        ]
        if not tables:
            return True
        if "alembic_version" not in tables:
            return False
        version = await connection.fetchval("SELECT version_num FROM alembic_version")
        if version != head_revision():
            return False
        await connection.execute("SET lock_timeout = '5s'")
        # The migrations' own rows stay: the schema's version, and the auth epoch's one row.
        data = ", ".join(f'"{t}"' for t in tables if t not in ("alembic_version", "auth_epoch"))
        await connection.execute(f"TRUNCATE {data} RESTART IDENTITY CASCADE")
        return True
    except (OSError, asyncpg.PostgresError):
        return False
    finally:
        await connection.close()


def _run(coroutine: Any) -> Any:
    """Run a coroutine to completion, from sync code or from inside a running event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _execute(statement: str) -> None:
    """Run one statement on the server, from sync code or from inside a running event loop."""
    _run(_on_server(statement))


async def _on_server(statement: str) -> None:
    try:
        connection = await asyncpg.connect(POSTGRES_SERVER, timeout=10)
    except (OSError, asyncpg.PostgresError) as e:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {POSTGRES_SERVER} ({e}); start it "
            "(`.ci/run` does) or set DEPOT_API_TEST_POSTGRES"
        ) from e
    try:
        await connection.execute(statement)
    finally:
        await connection.close()
