"""The migrations build exactly the schema the queries are written against."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from depot_api.store.database import create_engine
from depot_api.store.migrating import head_revision, migrate
from depot_api.store.schema import metadata
from depot_api.store.urls import sqlite_url

from ..databases import BACKENDS, database


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database never used before (the shared fixture may hand out a migrated one)."""
    with database(request.param, tmp_path) as url:
        yield url


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, metadata))


def _version(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def test_migrated_schema_matches_metadata(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
            assert await conn.run_sync(_version) == head_revision() == "0011"
    finally:
        await engine.dispose()


async def test_migrating_twice_changes_nothing(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        await migrate(engine)
        await migrate(engine)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: sorted(inspect(c).get_table_names()))
        assert tables == [
            "alembic_version",
            "auth_epoch",
            "build_endpoints",
            "build_insights",
            "build_shares",
            "build_status_reports",
            "build_status_seen",
            "build_step_logs",
            "build_steps",
            "builds",
            "console_sessions",
            "machine_connections",
            "machines",
            "memberships",
            "organizations",
            "project_cas",
            "projects",
            "tokens",
            "trust_policies",
            "users",
        ]
    finally:
        await engine.dispose()


async def test_the_auth_epoch_starts_with_its_one_row(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            rows = (await conn.exec_driver_sql("SELECT id, value FROM auth_epoch")).all()
        assert [tuple(r) for r in rows] == [(1, 0)]
    finally:
        await engine.dispose()


async def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = create_engine(sqlite_url(tmp_path))
    try:
        async with engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
            keys = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
        assert (mode, keys) == ("wal", 1)
    finally:
        await engine.dispose()
