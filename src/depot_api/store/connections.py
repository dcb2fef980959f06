"""Client connections over SQL (the ConnectionStore of store.interface): what admitting a
connection to a machine's front door depends on, and the agents' reports of connections.

Admission is asked before every client connection of every build, so it is one SELECT that
reads the machine's row, the build's, the build's project (a deleted project's build is no
build) and whether the build holds an endpoint on the machine, all by primary key.

Reports are upserts by (machine, connection ID): an interim report of a long connection and
its final one update one row, and a batch the agent sends again is stored once. A machine's
rows of connections that ended (or were last reported) more than the retention ago are
deleted whenever it reports, so the table holds about a week of each machine's connections.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from depot_api.models import AdmissionFacts, Build, BuildStatus, MachineConnection
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.driver import Query, Row, bound
from depot_api.store.interface import ConnectionStore
from depot_api.times import from_micros, to_micros

c, m, b, p, e = t.machine_connections, t.machines, t.builds, t.projects, t.build_endpoints

_ADMISSION = Query(
    select(
        m.c.token_id,
        m.c.project_id,
        m.c.binding_id,
        p.c.id.label("live_project_id"),
        b.c.id.label("build_id"),
        b.c.org_id,
        b.c.status,
        b.c.created_at,
        b.c.started_at,
        b.c.finished_at,
        exists()
        .where(e.c.build_id == b.c.id, e.c.machine_id == m.c.id, e.c.released_at.is_(None))
        .label("endpoint_held"),
    )
    .select_from(
        m.outerjoin(b, b.c.id == bindparam("build_id")).outerjoin(
            p, and_(p.c.id == b.c.project_id, p.c.deleted_at.is_(None))
        )
    )
    .where(m.c.id == bindparam("machine_id"))
)

_REPORTED = (
    "machine_id",
    "connection_id",
    "build_id",
    "binding_id",
    "peer",
    "opened_at",
    "closed_at",
    "admitted",
    "refusal",
    "bytes_from_client",
    "bytes_to_client",
    "reported_at",
)


def _upsert(dialect: Any) -> Query:
    """The insert-or-update of one report, in the dialect's ON CONFLICT (PostgreSQL's and
    SQLite's are written alike, but each dialect compiles only its own construct)."""
    statement = dialect.insert(c).values(
        {
            **bound(*_REPORTED),
            "project_id": select(b.c.project_id)
            .where(b.c.id == bindparam("build_id"))
            .scalar_subquery(),
        }
    )
    new = statement.excluded

    def larger(column: str) -> ColumnElement[Any]:
        return case((new[column] > c.c[column], new[column]), else_=c.c[column])

    return Query(
        statement.on_conflict_do_update(
            index_elements=[c.c.machine_id, c.c.connection_id],
            set_={
                # A connection closes once; its counts only grow, whatever order reports
                # arrive in. What it was (build, peer, admitted) stays as first reported.
                "closed_at": func.coalesce(c.c.closed_at, new.closed_at),
                "bytes_from_client": larger("bytes_from_client"),
                "bytes_to_client": larger("bytes_to_client"),
                "reported_at": new.reported_at,
            },
        )
    )


_UPSERT = {"postgresql": _upsert(postgresql), "sqlite": _upsert(sqlite)}

_FORGET_OLD = Query(
    delete(c).where(
        c.c.machine_id == bindparam("machine_id"),
        # The index's range: only rows opened before the bound are looked at.
        c.c.opened_at < bindparam("keep_since"),
        func.coalesce(c.c.closed_at, c.c.reported_at) < bindparam("keep_since"),
    )
)


class SqlConnectionStore(ConnectionStore):
    def __init__(self, database: Database) -> None:
        self._db = database
        self._upsert = _UPSERT[database.dialect_name]

    async def admission_facts(self, machine_id: str, build_id: str) -> AdmissionFacts | None:
        async with self._db.read() as session:
            row = await session.one(_ADMISSION, machine_id=machine_id, build_id=build_id)
        if row is None:
            return None
        build = None
        if row["live_project_id"] is not None:
            build = Build(
                row["build_id"],
                row["live_project_id"],
                row["org_id"],
                BuildStatus(row["status"]),
                row["created_at"],
                row["started_at"],
                row["finished_at"],
            )
        return AdmissionFacts(
            machine_token_id=row["token_id"],
            machine_project_id=row["project_id"],
            machine_binding_id=row["binding_id"],
            build=build,
            endpoint_held=bool(row["endpoint_held"]),
        )

    async def record_connections(
        self, machine_id: str, connections: list[MachineConnection], *, keep_since: datetime
    ) -> None:
        async with self._db.write() as session:
            for connection in connections:
                await session.run(
                    self._upsert,
                    machine_id=machine_id,
                    connection_id=connection.connection_id,
                    build_id=connection.build_id,
                    binding_id=connection.binding_id,
                    peer=connection.peer,
                    opened_at=to_micros(connection.opened_at),
                    closed_at=t.micros_or_none(connection.closed_at),
                    admitted=connection.admitted,
                    refusal=connection.refusal,
                    bytes_from_client=connection.bytes_from_client,
                    bytes_to_client=connection.bytes_to_client,
                    reported_at=to_micros(connection.reported_at),
                )
            await session.run(_FORGET_OLD, machine_id=machine_id, keep_since=to_micros(keep_since))

    async def list_connections(
        self, *, machine_id: str | None, build_id: str | None, limit: int
    ) -> list[MachineConnection]:
        async with self._db.read() as session:
            rows = await session.all(_listing(machine_id, build_id).limit(limit))
        return [_connection(row) for row in rows]


def _listing(machine_id: str | None, build_id: str | None) -> Select[Any]:
    """Newest first; its shape depends on the filters given, so it is compiled at each call
    (an operator's listing, not a hot path)."""
    query = select(c)
    if machine_id is not None:
        query = query.where(c.c.machine_id == machine_id)
    if build_id is not None:
        query = query.where(c.c.build_id == build_id)
    return query.order_by(c.c.opened_at.desc(), c.c.machine_id.desc(), c.c.connection_id.desc())


def _connection(r: Row) -> MachineConnection:
    return MachineConnection(
        machine_id=r["machine_id"],
        connection_id=r["connection_id"],
        build_id=r["build_id"],
        binding_id=r["binding_id"],
        peer=r["peer"],
        opened_at=from_micros(r["opened_at"]),
        closed_at=t.at_or_none(r["closed_at"]),
        admitted=bool(r["admitted"]),
        refusal=r["refusal"],
        bytes_from_client=r["bytes_from_client"],
        bytes_to_client=r["bytes_to_client"],
        reported_at=from_micros(r["reported_at"]),
        project_id=r["project_id"],
    )
