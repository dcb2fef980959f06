"""The SQL driver layer on both databases: compiled statements, transactions, errors, and
SQLite's write lock shared with other processes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select, text

from depot_api.store.driver import Driver, Query, SqliteDriver, open_driver
from depot_api.store.errors import ConstraintViolation, StoreUnavailable
from depot_api.store.urls import normalize_url, sqlite_url
from tests.databases import BACKENDS, database

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(32), nullable=False, unique=True),
)
_BY_ID = Query(select(things).where(things.c.id == bindparam("id")))
_ADD = Query(insert(things).values(id=bindparam("id"), name=bindparam("name")))
_NAMES = Query(select(things.c.name).order_by(things.c.id))


@pytest.fixture(params=BACKENDS)
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
    with database(request.param, tmp_path) as url:
        driver = open_driver(normalize_url(url))
        async with driver.write() as session:
            await session.run(
                text(
                    "CREATE TABLE things (id INTEGER PRIMARY KEY, name VARCHAR(32) NOT NULL UNIQUE)"
                )
            )
        try:
            yield driver
        finally:
            await driver.close()


async def names(driver: Driver) -> list[str]:
    async with driver.read() as session:
        return [row["name"] for row in await session.all(_NAMES)]


async def test_a_compiled_statement_runs_with_named_parameters(driver: Driver) -> None:
    async with driver.write() as session:
        assert await session.run(_ADD, id=1, name="one") == 1
        assert await session.run(_ADD, name="two", id=2) == 1
    async with driver.read() as session:
        row = await session.one(_BY_ID, id=2)
        assert row is not None and (row["id"], row["name"]) == (2, "two")
        assert await session.one(_BY_ID, id=3) is None
        assert await session.value(select(things.c.name).where(things.c.id == 1)) == "one"
        assert await session.value(_BY_ID, id=3) is None


async def test_a_statement_shaped_by_its_values_is_compiled_per_call(driver: Driver) -> None:
    async with driver.write() as session:
        for i, name in enumerate(["a", "b", "c", "d"]):
            await session.run(_ADD, id=i, name=name)
    async with driver.read() as session:
        picked = await session.all(select(things.c.name).where(things.c.id.in_([0, 2, 3])))
        assert sorted(r["name"] for r in picked) == ["a", "c", "d"]
        assert await session.all(select(things.c.name).where(things.c.id.in_([]))) == []


async def test_a_compiled_statement_keeps_the_values_written_into_it(driver: Driver) -> None:
    """A value written into the statement (not a bindparam) is a constant of the Query."""
    named_b = Query(
        select(things.c.id).where(things.c.name == "b", things.c.id > bindparam("above"))
    )
    async with driver.write() as session:
        for i, name in enumerate(["a", "b", "c"]):
            await session.run(_ADD, id=i, name=name)
    async with driver.read() as session:
        assert [r["id"] for r in await session.all(named_b, above=0)] == [1]
        assert await session.all(named_b, above=1) == []


async def test_a_compiled_statement_spreads_a_list_parameter(driver: Driver) -> None:
    among = Query(
        select(things.c.name)
        .where(things.c.id.in_(bindparam("ids", expanding=True)), things.c.name != "c")
        .order_by(things.c.id)
    )
    async with driver.write() as session:
        for i, name in enumerate(["a", "b", "c", "d"]):
            await session.run(_ADD, id=i, name=name)
    async with driver.read() as session:
        assert [r["name"] for r in await session.all(among, ids=[0, 2, 3])] == ["a", "d"]
        assert [r["name"] for r in await session.all(among, ids=[1])] == ["b"]
        assert await session.all(among, ids=[]) == []


async def test_a_write_commits_as_a_whole_or_not_at_all(driver: Driver) -> None:
    async with driver.write() as session:
        await session.run(_ADD, id=1, name="kept")

    async def add_then_fail() -> None:
        async with driver.write() as session:
            await session.run(_ADD, id=2, name="dropped")
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        await add_then_fail()
    assert await names(driver) == ["kept"]


async def test_a_constraint_violation_is_named_and_nothing_is_kept(driver: Driver) -> None:
    async with driver.write() as session:
        await session.run(_ADD, id=1, name="taken")

    async def add_two() -> None:
        async with driver.write() as session:
            await session.run(_ADD, id=2, name="other")
            await session.run(_ADD, id=3, name="taken")

    with pytest.raises(ConstraintViolation) as raised:
        await add_two()
    assert "name" in raised.value.constraint  # things_name_key, or "things.name"
    assert await names(driver) == ["taken"]
    # The driver is usable after the failure.
    async with driver.write() as session:
        await session.run(_ADD, id=2, name="other")
    assert await names(driver) == ["taken", "other"]


async def test_many_rows_run_in_one_call_and_a_violation_keeps_none(driver: Driver) -> None:
    async with driver.write() as session:
        await session.run_many(_ADD, [{"id": n, "name": f"n{n}"} for n in range(1, 501)])
        await session.run_many(_ADD, [])
    assert len(await names(driver)) == 500

    async def add_with_a_clash() -> None:
        async with driver.write() as session:
            await session.run_many(_ADD, [{"id": 501, "name": "new"}, {"id": 502, "name": "n7"}])

    with pytest.raises(ConstraintViolation):
        await add_with_a_clash()
    assert len(await names(driver)) == 500


async def test_an_unreachable_postgresql_is_unavailable() -> None:
    driver = open_driver("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(StoreUnavailable):
            async with driver.read() as session:
                await session.all(_NAMES)
    finally:
        await driver.close()


async def test_a_sqlite_writer_waits_for_another_process_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite3"
    driver = SqliteDriver(path)
    async with driver.write() as session:
        await session.run(
            text("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
        )
    other = sqlite3.connect(path, isolation_level=None)  # another process's connection
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO things VALUES (1, 'first')")

        async def write() -> None:
            async with driver.write() as session:
                await session.run(_ADD, id=2, name="second")

        waiting = asyncio.create_task(write())
        # Meanwhile the loop serves others: reads go on (WAL), the write waits.
        for _ in range(20):
            await asyncio.sleep(0.01)
            assert await names(driver) == []
        assert not waiting.done()
        other.execute("COMMIT")
        await asyncio.wait_for(waiting, 5)
        assert await names(driver) == ["first", "second"]
    finally:
        other.close()
        await driver.close()


async def test_a_sqlite_write_lock_held_too_long_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    driver = SqliteDriver(path, lock_timeout=0.2)
    async with driver.write() as session:
        await session.run(text("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)"))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")

        async def add() -> None:
            async with driver.write() as session:
                await session.run(_ADD, id=1, name="never")

        with pytest.raises(StoreUnavailable, match=r"held the write lock for 0\.2s"):
            await add()
        other.execute("ROLLBACK")
        async with driver.write() as session:  # and works again once the lock is free
            await session.run(_ADD, id=1, name="now")
        assert await names(driver) == ["now"]
    finally:
        other.close()
        await driver.close()


async def test_a_sqlite_statement_inside_another_transaction_is_refused(tmp_path: Path) -> None:
    driver = SqliteDriver(tmp_path / "db.sqlite3")
    try:
        async with driver.write() as session:
            await session.run(text("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)"))
            with pytest.raises(RuntimeError, match="inside another"):
                async with driver.read():
                    pass
    finally:
        await driver.close()


async def test_a_sqlite_url_names_the_file_as_sqlalchemy_reads_it(tmp_path: Path) -> None:
    """Migrations open the file through SQLAlchemy, which decodes the URL's %-escapes (a data
    directory named with @ or : is escaped in the normalized URL); the driver opens that same
    file."""
    data_dir = tmp_path / "depot@prod:1"
    data_dir.mkdir()
    driver = open_driver(normalize_url(sqlite_url(data_dir)))
    try:
        async with driver.write() as session:
            await session.run(text("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)"))
    finally:
        await driver.close()
    assert [f.name for f in data_dir.iterdir()] == ["depot-api.sqlite3"]


async def test_a_sqlite_file_that_cannot_be_opened_is_unavailable_until_it_can(
    tmp_path: Path,
) -> None:
    driver = SqliteDriver(tmp_path / "not yet" / "db.sqlite3")
    try:
        for _ in range(2):  # and a failed open leaves nothing behind that refuses the next
            with pytest.raises(StoreUnavailable, match="cannot open"):
                async with driver.read() as session:
                    await session.all(_NAMES)
            with pytest.raises(StoreUnavailable, match="cannot open"):
                async with driver.write():
                    pass
        (tmp_path / "not yet").mkdir()
        async with driver.write() as session:
            await session.run(text("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)"))
        assert await names(driver) == []
    finally:
        await driver.close()


async def test_a_sqlite_transaction_that_sqlite_ended_itself_reports_the_real_error(
    tmp_path: Path,
) -> None:
    """After some errors (a full disk, an I/O error) SQLite rolls the transaction back by
    itself; here a ROLLBACK inside the block stands in for that."""
    driver = SqliteDriver(tmp_path / "db.sqlite3")
    try:
        async with driver.write() as session:
            await session.run(text("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)"))

        async def ended_then(error: Exception | None) -> None:
            async with driver.write() as session:
                await session.run(_ADD, id=1, name="lost")
                await session.run(text("ROLLBACK"))
                if error is not None:
                    raise error

        with pytest.raises(ValueError, match="the caller's"):
            await ended_then(ValueError("the caller's"))
        with pytest.raises(StoreUnavailable, match="commit failed"):
            await ended_then(None)
        async with driver.write() as session:  # the driver goes on
            await session.run(_ADD, id=2, name="kept")
        assert await names(driver) == ["kept"]
    finally:
        await driver.close()


async def test_connections_in_use_and_idle_are_counted(driver: Driver) -> None:
    """What the database connections gauge samples (metrics.py)."""
    assert driver.connections() == (0, 1)  # the fixture's write is over
    async with driver.read() as session:
        await session.value(text("SELECT 1"))
        in_use, _ = driver.connections()
        assert in_use == 1
    in_use, idle = driver.connections()
    assert (in_use, idle) == (0, 1)
    async with driver.write() as session:
        await session.value(text("SELECT 1"))
        assert driver.connections()[0] == 1
    assert driver.connections()[0] == 0


async def test_a_driver_not_yet_used_has_no_connection(tmp_path: Path) -> None:
    for backend in BACKENDS:
        with database(backend, tmp_path / backend) as url:
            driver = open_driver(normalize_url(url))
            assert driver.connections() == (0, 0)
            await driver.close()
