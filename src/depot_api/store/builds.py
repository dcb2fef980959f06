"""Builds over SQL (the BuildStore of store.interface): registration with the build's token,
the one finish that wins, health and machine-wait bookkeeping, and status reports.

Everything here writes the builds table (or its status reports) and nothing else but the
build's token, so the hot path (CreateBuild, FinishBuild, health) never touches a machine.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from depot_api.models import Build, BuildStatus, StatusReport, Token
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.errors import DuplicateKey
from depot_api.store.interface import BuildStore, Position
from depot_api.store.orgs import insert_token_row
from depot_api.store.schema import at_or_none, micros_or_none
from depot_api.times import from_micros, to_micros

b = t.builds


class SqlBuildStore(BuildStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert_build(self, build: Build, token: Token) -> None:
        async with self._db.write() as conn:
            try:
                await conn.execute(
                    b.insert().values(
                        id=build.id,
                        project_id=build.project_id,
                        org_id=build.org_id,
                        status=build.status.value,
                        created_at=to_micros(build.created_at),
                        started_at=micros_or_none(build.started_at),
                        finished_at=micros_or_none(build.finished_at),
                        error_message=build.error_message,
                    )
                )
            except IntegrityError:
                raise DuplicateKey(build.id) from None
            await insert_token_row(conn, token)

    async def get_build(self, build_id: str) -> Build | None:
        p = t.projects
        query = (
            select(b)
            .join(p, p.c.id == b.c.project_id)
            .where(b.c.id == build_id, p.c.deleted_at.is_(None))
        )
        async with self._db.read() as conn:
            r = (await conn.execute(query)).first()
            return None if r is None else _build(r)

    async def list_builds(
        self, project_id: str, before: Position | None, limit: int
    ) -> list[Build]:
        query = select(b).where(b.c.project_id == project_id)
        if before is not None:
            query = query.where(tuple_(b.c.created_at, b.c.id) < tuple_(*before))
        query = query.order_by(b.c.created_at.desc(), b.c.id.desc()).limit(limit)
        async with self._db.read() as conn:
            return [_build(r) for r in await conn.execute(query)]

    async def finish_build(
        self, build_id: str, status: BuildStatus, at: datetime, error_message: str | None
    ) -> Build | None:
        async with self._db.write() as conn:
            # The status condition makes the transition atomic: of concurrent finishers, in
            # this process or any other, exactly one update matches a RUNNING row.
            await conn.execute(
                update(b)
                .where(b.c.id == build_id, b.c.status == BuildStatus.RUNNING.value)
                .values(status=status.value, finished_at=to_micros(at), error_message=error_message)
            )
            r = (await conn.execute(select(b).where(b.c.id == build_id))).first()
            return None if r is None else _build(r)

    # Health and machine waits

    async def touch_build_health(self, build_id: str, now: datetime) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                update(b)
                .where(b.c.id == build_id, b.c.status == BuildStatus.RUNNING.value)
                .values(last_health_at=to_micros(now))
            )
            return bool(result.rowcount)

    async def note_machine_wait(self, build_id: str, now: datetime) -> datetime | None:
        micros = to_micros(now)
        async with self._db.write() as conn:
            result = await conn.execute(
                update(b)
                .where(b.c.id == build_id, b.c.status == BuildStatus.RUNNING.value)
                .values(
                    last_health_at=micros,
                    machine_wanted_since=func.coalesce(b.c.machine_wanted_since, micros),
                )
                .returning(b.c.machine_wanted_since)
            )
            since = result.scalar_one_or_none()
            return None if since is None else from_micros(since)

    async def mark_build_started(self, build_id: str, at: datetime) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                update(b)
                .where(b.c.id == build_id)
                .values(
                    started_at=func.coalesce(b.c.started_at, to_micros(at)),
                    machine_wanted_since=None,
                )
            )

    async def cancel_silent_builds(self, *, silent_since: datetime, now: datetime) -> list[str]:
        micros = to_micros(now)
        async with self._db.write() as conn:
            stale = and_(
                b.c.status == BuildStatus.RUNNING.value,
                b.c.last_health_at.is_not(None),
                b.c.last_health_at < to_micros(silent_since),
            )
            ids = [r.id for r in await conn.execute(select(b.c.id).where(stale))]
            if not ids:
                return []
            await conn.execute(
                update(b)
                .where(b.c.id.in_(ids), b.c.status == BuildStatus.RUNNING.value)
                .values(
                    status=BuildStatus.CANCELED.value,
                    finished_at=micros,
                    error_message="canceled: the client stopped reporting health",
                )
            )
            return ids

    # Status reports

    async def insert_status_report(
        self, build_id: str, received_at: datetime, report: bytes, *, max_total_bytes: int
    ) -> bool:
        r = t.build_status_reports
        async with self._db.write() as conn:
            kept = await conn.scalar(
                select(func.coalesce(func.sum(func.length(r.c.report)), 0)).where(
                    r.c.build_id == build_id
                )
            )
            if int(kept or 0) + len(report) > max_total_bytes:
                return False
            await conn.execute(
                r.insert().values(
                    build_id=build_id, received_at=to_micros(received_at), report=report
                )
            )
            return True

    async def list_status_reports(self, build_id: str) -> list[StatusReport]:
        r = t.build_status_reports
        query = select(r).where(r.c.build_id == build_id).order_by(r.c.id)
        async with self._db.read() as conn:
            return [
                StatusReport(row.build_id, from_micros(row.received_at), bytes(row.report))
                for row in await conn.execute(query)
            ]


def _build(r: Row[Any]) -> Build:
    return Build(
        id=r.id,
        project_id=r.project_id,
        org_id=r.org_id,
        status=BuildStatus(r.status),
        created_at=from_micros(r.created_at),
        started_at=at_or_none(r.started_at),
        finished_at=at_or_none(r.finished_at),
        error_message=r.error_message,
    )
