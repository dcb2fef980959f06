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

import asyncpg
from sqlalchemy.engine import make_url

from depot_api.store.engine import sqlite_url

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


def _execute(statement: str) -> None:
    """Run one statement on the server, from sync code or from inside a running event loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _on_server(statement)).result()


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
