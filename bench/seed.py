"""Putting many builds into a project quickly: straight into the database, in bulk, the way
a long-lived installation would have accumulated them (finished, one per millisecond)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import asyncpg

from depot_api.models import BuildStatus

_COLUMNS = ("id", "project_id", "org_id", "status", "created_at", "started_at", "finished_at")
_CHUNK = 50_000


def build_rows(
    prefix: str, project_id: str, org_id: str, count: int, status: BuildStatus
) -> list[tuple[object, ...]]:
    """IDs are the prefix and a counter (10 characters: valid, and never a random ID's clash
    in practice since random IDs are not built that way); creation times 1 ms apart, ending
    an hour ago."""
    start = int(time.time() * 1_000_000) - 3_600_000_000 - count * 1000
    finished = status is not BuildStatus.RUNNING
    rows = []
    for i in range(count):
        created = start + i * 1000
        rows.append(
            (
                f"{prefix}{i:0{10 - len(prefix)}d}",
                project_id,
                org_id,
                status.value,
                created,
                created if finished else None,
                created + 500 if finished else None,
            )
        )
    return rows


def insert(database: str, data_dir: Path, rows: list[tuple[object, ...]]) -> None:
    if database.startswith("postgresql"):
        asyncio.run(_insert_postgres(database, rows))
    else:
        _insert_sqlite(data_dir / "depot-api.sqlite3", rows)


def _insert_sqlite(path: Path, rows: list[tuple[object, ...]]) -> None:
    connection = sqlite3.connect(path, timeout=60)
    try:
        marks = ", ".join("?" for _ in _COLUMNS)
        with connection:
            for at in range(0, len(rows), _CHUNK):
                connection.executemany(
                    f"INSERT INTO builds ({', '.join(_COLUMNS)}) VALUES ({marks})",
                    rows[at : at + _CHUNK],
                )
    finally:
        connection.close()


async def _insert_postgres(url: str, rows: list[tuple[object, ...]]) -> None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.copy_records_to_table("builds", records=rows, columns=list(_COLUMNS))
        # VACUUM, not only ANALYZE: a million inserted rows would otherwise bring autovacuum
        # to the table in the middle of a later row, on the same cores.
        await connection.execute("VACUUM (ANALYZE) builds")
    finally:
        await connection.close()
