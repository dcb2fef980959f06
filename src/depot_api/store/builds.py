"""Builds over SQL (the BuildStore of store.interface): registration with the build's token,
the one finish that wins, health and machine-wait bookkeeping, and status reports.

Everything here writes the builds table (or its status reports) and nothing else but the
build's token, so the hot path (CreateBuild, FinishBuild, health) never touches a machine.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, and_, bindparam, func, insert, select, tuple_, update

from depot_api.models import Build, BuildStatus, StatusReport, Token
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.driver import Query, Row, bound
from depot_api.store.errors import ConstraintViolation, DuplicateKey
from depot_api.store.interface import BuildStore, Position
from depot_api.store.orgs import INSERT_TOKEN, insert_token_row, token_values
from depot_api.times import from_micros, to_micros

b, p, r = t.builds, t.projects, t.build_status_reports

_running = and_(b.c.id == bindparam("id"), b.c.status == BuildStatus.RUNNING.value)
_newest_first = (b.c.created_at.desc(), b.c.id.desc())

_BUILD_FIELDS = (
    "id",
    "project_id",
    "org_id",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "error_message",
    "trust_policy_id",
)
_INSERT_BUILD = Query(insert(b).values(bound(*_BUILD_FIELDS)))
# PostgreSQL: a build and its token in one statement (a data-modifying WITH), atomic by itself,
# so that CreateBuild costs no BEGIN and COMMIT round trips. SQLite has no such WITH; there
# the two inserts are one transaction, which costs nothing more (no round trips).
_INSERT_BUILD_AND_TOKEN = Query(
    INSERT_TOKEN.add_cte(
        insert(b)
        .values({field: bindparam(f"new_build_{field}") for field in _BUILD_FIELDS})
        .cte("new_build")
    )
)
# A build's columns in the order _build reads them (by position: listings read hundreds).
BUILD_COLUMNS = (
    b.c.id,
    b.c.project_id,
    b.c.org_id,
    b.c.status,
    b.c.created_at,
    b.c.started_at,
    b.c.finished_at,
    b.c.error_message,
    b.c.trust_policy_id,
)
_BUILD = Query(select(*BUILD_COLUMNS).where(b.c.id == bindparam("id")))
_LIVE_BUILD = Query(  # a build whose project is not deleted
    select(*BUILD_COLUMNS)
    .join(p, p.c.id == b.c.project_id)
    .where(b.c.id == bindparam("id"), p.c.deleted_at.is_(None))
)


def _listing(*, with_status: bool, from_position: bool) -> Query:
    """A page of a project's builds, newest first: optionally of one status, optionally
    strictly before a position. Each variant is compiled once; with a status, the walk runs
    down ix_builds_project_status_created, so a rare status costs no scan of the others."""
    conditions = [b.c.project_id == bindparam("project_id")]
    if with_status:
        conditions.append(b.c.status == bindparam("status"))
    if from_position:
        conditions.append(
            tuple_(b.c.created_at, b.c.id)
            < tuple_(
                bindparam("before_created_at", type_=BigInteger),
                bindparam("before_id", type_=t.ID),
            )
        )
    return Query(
        select(*BUILD_COLUMNS).where(*conditions).order_by(*_newest_first).limit(bindparam("limit"))
    )


# (with a status, from a position) -> its statement
_LISTINGS = {
    (with_status, from_position): _listing(with_status=with_status, from_position=from_position)
    for with_status in (False, True)
    for from_position in (False, True)
}

# The status condition makes the transition atomic: of concurrent finishers, in this process
# or any other, exactly one update matches a RUNNING row.
_FINISH = Query(
    update(b)
    .where(_running)
    .values(
        status=bindparam("new_status"),
        finished_at=bindparam("at"),
        error_message=bindparam("message"),
    )
    .returning(*BUILD_COLUMNS)
)
_TOUCH_HEALTH = Query(update(b).where(_running).values(last_health_at=bindparam("at")))
_NOTE_MACHINE_WAIT = Query(
    update(b)
    .where(_running)
    .values(
        last_health_at=bindparam("at"),
        machine_wanted_since=func.coalesce(
            b.c.machine_wanted_since, bindparam("at", type_=BigInteger)
        ),
    )
    .returning(b.c.machine_wanted_since)
)
_MARK_STARTED = Query(
    update(b)
    .where(b.c.id == bindparam("id"))
    .values(
        started_at=func.coalesce(b.c.started_at, bindparam("at", type_=BigInteger)),
        machine_wanted_since=None,
    )
)
_CANCEL_SILENT = Query(
    update(b)
    .where(
        b.c.status == BuildStatus.RUNNING.value,
        b.c.last_health_at.is_not(None),
        b.c.last_health_at < bindparam("silent_since"),
    )
    .values(
        status=BuildStatus.CANCELED.value,
        finished_at=bindparam("at"),
        error_message="canceled: the client stopped reporting health",
    )
    .returning(b.c.id)
)
_REPORTS_SIZE = Query(
    select(func.coalesce(func.sum(func.length(r.c.report)), 0)).where(
        r.c.build_id == bindparam("build_id")
    )
)
_INSERT_REPORT = Query(insert(r).values(bound("build_id", "received_at", "report")))
_REPORTS = Query(select(r).where(r.c.build_id == bindparam("build_id")).order_by(r.c.id))


class SqlBuildStore(BuildStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert_build(self, build: Build, token: Token) -> None:
        values = {
            "id": build.id,
            "project_id": build.project_id,
            "org_id": build.org_id,
            "status": build.status.value,
            "created_at": build.created_us,
            "started_at": build.started_us,
            "finished_at": build.finished_us,
            "error_message": build.error_message,
            "trust_policy_id": build.trust_policy_id,
        }
        if self._db.dialect_name == "postgresql":
            async with self._db.read() as session:  # one statement: its own transaction
                try:
                    await session.run(
                        _INSERT_BUILD_AND_TOKEN,
                        **token_values(token),
                        **{f"new_build_{field}": value for field, value in values.items()},
                    )
                except ConstraintViolation:
                    raise DuplicateKey(build.id) from None
            return
        async with self._db.write() as session:
            try:
                await session.run(_INSERT_BUILD, **values)
            except ConstraintViolation:
                raise DuplicateKey(build.id) from None
            await insert_token_row(session, token)

    async def get_build(self, build_id: str) -> Build | None:
        async with self._db.read() as session:
            row = await session.one(_LIVE_BUILD, id=build_id)
        return None if row is None else build_of_row(row)

    async def list_builds(
        self,
        project_id: str,
        before: Position | None,
        limit: int,
        status: BuildStatus | None = None,
    ) -> list[Build]:
        params: dict[str, object] = {"project_id": project_id, "limit": limit}
        if status is not None:
            params["status"] = status.value
        if before is not None:
            params["before_created_at"], params["before_id"] = before
        query = _LISTINGS[(status is not None, before is not None)]
        async with self._db.read() as session:
            rows = await session.all(query, **params)
        return [build_of_row(row) for row in rows]

    async def finish_build(
        self, build_id: str, status: BuildStatus, at: datetime, error_message: str | None
    ) -> Build | None:
        async with self._db.write() as session:
            row = await session.one(
                _FINISH,
                id=build_id,
                new_status=status.value,
                at=to_micros(at),
                message=error_message,
            )
            if row is None:  # not running (finished already), or no such build
                row = await session.one(_BUILD, id=build_id)
            return None if row is None else build_of_row(row)

    # Health and machine waits

    async def touch_build_health(self, build_id: str, now: datetime) -> bool:
        async with self._db.write() as session:
            return bool(await session.run(_TOUCH_HEALTH, id=build_id, at=to_micros(now)))

    async def note_machine_wait(self, build_id: str, now: datetime) -> datetime | None:
        async with self._db.write() as session:
            since = await session.value(_NOTE_MACHINE_WAIT, id=build_id, at=to_micros(now))
        return None if since is None else from_micros(since)

    async def mark_build_started(self, build_id: str, at: datetime) -> None:
        async with self._db.write() as session:
            await session.run(_MARK_STARTED, id=build_id, at=to_micros(at))

    async def cancel_silent_builds(self, *, silent_since: datetime, now: datetime) -> list[str]:
        async with self._db.write() as session:
            rows = await session.all(
                _CANCEL_SILENT, silent_since=to_micros(silent_since), at=to_micros(now)
            )
        return [row["id"] for row in rows]

    # Status reports

    async def insert_status_report(
        self, build_id: str, received_at: datetime, report: bytes, *, max_total_bytes: int
    ) -> bool:
        async with self._db.write() as session:
            kept = await session.value(_REPORTS_SIZE, build_id=build_id)
            if int(kept or 0) + len(report) > max_total_bytes:
                return False
            await session.run(
                _INSERT_REPORT,
                build_id=build_id,
                received_at=to_micros(received_at),
                report=report,
            )
            return True

    async def list_status_reports(self, build_id: str) -> list[StatusReport]:
        async with self._db.read() as session:
            rows = await session.all(_REPORTS, build_id=build_id)
        return [
            StatusReport(row["build_id"], from_micros(row["received_at"]), bytes(row["report"]))
            for row in rows
        ]


_STATUSES = {status.value: status for status in BuildStatus}


def build_of_row(row: Row) -> Build:
    """A build from a row of BUILD_COLUMNS (which are its fields, in order)."""
    (
        id_,
        project_id,
        org_id,
        status,
        created_us,
        started_us,
        finished_us,
        error_message,
        trust_policy_id,
    ) = row
    return Build(
        id_,
        project_id,
        org_id,
        _STATUSES[status],
        created_us,
        started_us,
        finished_us,
        error_message,
        trust_policy_id,
    )
