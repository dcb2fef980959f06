"""Machines over SQL (the MachineStore of store.interface): registering agents, heartbeats,
binding machines to projects, and the endpoints that say which machine serves which build.

Binding is decided inside the database so that it holds across any number of processes: an
idle machine is claimed with a conditional update (`WHERE project_id IS NULL`), and the
project's row is locked first (PostgreSQL: FOR NO KEY UPDATE; SQLite: the write lock of BEGIN
IMMEDIATE), so two builds of one project never claim two machines at once.

A claim records the binding the domain chose beforehand (its ID and server name) and no
certificate: the domain mints the server certificate after the claim's transaction, holding
no lock, and stores it with set_server_certificate, a conditional update of the one machine
row that succeeds only while that binding is still the machine's and has no certificate.

Lock order, so that transactions on PostgreSQL never deadlock: a project's row first (FOR NO
KEY UPDATE, which serialises acquisitions for one project without blocking CreateBuild), then
machine rows in ID order, then endpoint rows. Machines already locked by another transaction
are skipped, never waited for, where that is possible (claiming an idle machine, declaring
lost ones gone). No lock is global: a slow transaction holds up only what it touches. SQLite's
BEGIN IMMEDIATE serialises all writes anyway.

Ending a build touches no machine at all: an endpoint counts as held only while its build
runs, so finishing a build stays a one-row update, and the machine's idle timer starts from
the build's end.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Text,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    null,
    or_,
    select,
    update,
)

from depot_api.models import Binding, BuildStatus, Machine, MachineState, Platform
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.driver import Query, Row, Session, bound
from depot_api.store.errors import ConstraintViolation, DuplicateKey
from depot_api.store.interface import MachineStore
from depot_api.times import from_micros, to_micros

m, e, b, p = t.machines, t.build_endpoints, t.builds, t.projects

GONE, ACTIVE = MachineState.GONE.value, MachineState.ACTIVE.value


def _locking(where: ColumnElement[bool], *, skip_locked: bool = False) -> Query:
    """Lock the matching machine rows in ID order (FOR UPDATE on PostgreSQL; SQLite's write
    lock already covers them, and the clause compiles to nothing there); select their IDs."""
    return Query(
        select(m.c.id).where(where).order_by(m.c.id).with_for_update(skip_locked=skip_locked)
    )


def _releasing(where: ColumnElement[bool]) -> Query:
    """Release the matching held endpoints at :at; return their machines' IDs."""
    return Query(
        update(e)
        .where(where, e.c.released_at.is_(None))
        .values(released_at=bindparam("at"))
        .returning(e.c.machine_id)
    )


def _unbinding(statement: Update) -> Query:
    """The machine no longer serves a project; changed at :at."""
    return Query(
        statement.values(
            project_id=null(),
            binding_id=null(),
            cache_generation=null(),
            server_name=null(),
            server_cert=null(),
            server_key_sealed=null(),
            ready_binding_id=null(),
            changed_at=bindparam("at"),
        )
    )


_by_id = m.c.id == bindparam("id")
_of_project = m.c.project_id == bindparam("project_id")
_in_ids = m.c.id.in_(bindparam("machine_ids", expanding=True))
_endpoint_key = and_(e.c.build_id == bindparam("build_id"), e.c.platform == bindparam("platform"))

_INSERT_MACHINE = Query(
    insert(m).values(
        {
            **bound(
                "id",
                "token_id",
                "platform",
                "endpoint",
                "capacity",
                "state",
                "registered_at",
                "last_heartbeat_at",
                "changed_at",
            ),
            "disk_used_bytes": 0,
        }
    )
)
_MACHINE = Query(select(m).where(_by_id))
_MACHINES = Query(select(m).order_by(m.c.registered_at))
_live = m.c.state != GONE
_STAMP = Query(
    select(
        func.max(m.c.changed_at),
        func.count().filter(_live, m.c.last_heartbeat_at < bindparam("lost_before")),
        func.count().filter(_live, m.c.last_heartbeat_at < bindparam("stale_before")),
    )
)
_LAST_HEARD_FROM = Query(
    select(func.max(m.c.last_heartbeat_at)).where(
        m.c.platform == bindparam("platform"),
        # A machine bound to another project counts (it is released once idle); a draining
        # one counts only when bound to this project (it takes no new one); a gone one does
        # not (a heartbeat makes it active again).
        or_(
            m.c.state == ACTIVE,
            and_(m.c.state == MachineState.DRAINING.value, _of_project),
        ),
    )
)
# One statement: a machine that was gone is active again, and changed_at moves when the
# state or the ready binding changes, or when its trouble ends (an idle machine may then take a
# project: builds waiting for one look again). SET reads the row as it was before the update.
_ready = bindparam("ready_binding_id", type_=t.ID)
_error = bindparam("error", type_=Text)
_HEARTBEAT = Query(
    update(m)
    .where(_by_id)
    .values(
        last_heartbeat_at=bindparam("at"),
        ready_binding_id=_ready,
        disk_used_bytes=bindparam("disk", type_=BigInteger),
        buildkit_error=_error,
        state=case((m.c.state == GONE, ACTIVE), else_=m.c.state),
        changed_at=case(
            (
                or_(
                    m.c.state == GONE,
                    m.c.ready_binding_id.is_distinct_from(_ready),
                    and_(m.c.buildkit_error.is_not(None), _error.is_(None)),
                ),
                bindparam("at"),
            ),
            else_=m.c.changed_at,
        ),
    )
    .returning(*m.c)
)
_SET_STATE = Query(
    update(m).where(_by_id).values(state=bindparam("new_state"), changed_at=bindparam("at"))
)

# Acquiring, in lock order: the project's row (FOR NO KEY UPDATE: it serialises acquisitions
# for the project without blocking CreateBuild's foreign-key check), then machine rows in ID
# order, then endpoint rows.
_LOCK_LOST = _locking(
    and_(_live, m.c.last_heartbeat_at < bindparam("lost_before")), skip_locked=True
)
_RELEASE_OF_MACHINES = _releasing(e.c.machine_id.in_(bindparam("machine_ids", expanding=True)))
_MARK_USED = Query(update(m).where(_in_ids).values(last_used_at=bindparam("at")))
_FORGET = _unbinding(update(m).where(_in_ids).values(state=GONE))
_LOCK_PROJECT = Query(
    select(p.c.cache_generation)
    .where(p.c.id == bindparam("project_id"), p.c.deleted_at.is_(None))
    .with_for_update(key_share=True)
)
_serving = and_(_of_project, m.c.platform == bindparam("platform"), _live)
_OWN = Query(
    select(m)
    .join(e, e.c.machine_id == m.c.id)
    .where(_endpoint_key, e.c.released_at.is_(None), _serving)
)
_LOCK_SERVING = Query(select(m).where(_serving).order_by(m.c.id).with_for_update())
_IDLE = Query(
    select(m.c.id)
    .where(
        m.c.platform == bindparam("platform"),
        m.c.state == ACTIVE,
        m.c.project_id.is_(None),
        # An idle machine that reports trouble (its Docker Engine is not there, its front
        # door cannot listen) could not build: it gets no project until it is well.
        m.c.buildkit_error.is_(None),
    )
    # Cache affinity: a machine that served this project before still has its cache.
    .order_by((m.c.last_project_id == bindparam("project_id")).desc(), m.c.last_used_at)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_CLAIM = Query(
    update(m)
    .where(_by_id, m.c.project_id.is_(None))  # never two projects
    .values(
        project_id=bindparam("project_id"),
        last_project_id=bindparam("project_id"),
        binding_id=bindparam("binding_id"),
        cache_generation=bindparam("generation"),
        server_name=bindparam("server_name"),
        # The certificate follows (set_server_certificate): minting it here would hold the
        # project's row and this machine's locked meanwhile.
        server_cert=null(),
        server_key_sealed=null(),
        last_used_at=bindparam("at"),
        changed_at=bindparam("at"),
    )
    .returning(*m.c)
)
_ENDPOINT = Query(select(e.c.build_id).where(_endpoint_key))
_INSERT_ENDPOINT = Query(
    insert(e).values(
        {**bound("build_id", "platform", "machine_id"), "acquired_at": bindparam("at")}
    )
)
_REOPEN_ENDPOINT = Query(
    update(e)
    .where(_endpoint_key)
    .values(machine_id=bindparam("machine_id"), acquired_at=bindparam("at"), released_at=null())
)
_USED = Query(update(m).where(_by_id).values(last_used_at=bindparam("at")))

_SET_CERTIFICATE = Query(
    update(m)
    .where(_by_id, m.c.binding_id == bindparam("binding_id"), m.c.server_cert.is_(None))
    .values(server_cert=bindparam("cert_pem"), server_key_sealed=bindparam("key_sealed"))
)
_LOCK_ENDPOINT_MACHINE = _locking(
    m.c.id.in_(
        select(e.c.machine_id).where(_endpoint_key, e.c.released_at.is_(None)).scalar_subquery()
    )
)
_RELEASE_ENDPOINT = _releasing(_endpoint_key)
_LOCK_ONE = _locking(_by_id)
_HELD = Query(
    select(e.c.build_id, b.c.status, b.c.finished_at)
    .join(b, b.c.id == e.c.build_id)
    .where(e.c.machine_id == bindparam("id"), e.c.released_at.is_(None))
)
_RELEASE_AT = Query(
    update(e)
    .where(e.c.build_id == bindparam("build_id"), e.c.machine_id == bindparam("id"))
    .values(released_at=bindparam("at"))
)
_USED_BY = Query(
    update(m)
    .where(_by_id, or_(m.c.last_used_at.is_(None), m.c.last_used_at < bindparam("last_end")))
    .values(last_used_at=bindparam("last_end"))
)
_RELEASE_IF_IDLE = _unbinding(
    update(m).where(
        _by_id,
        m.c.project_id.is_not(None),
        or_(m.c.last_used_at.is_(None), m.c.last_used_at < bindparam("idle_before")),
    )
)
_LOCK_PROJECT_MACHINES = _locking(_of_project)
_REBIND = Query(
    update(m)
    .where(_of_project)
    .values(
        binding_id=bindparam("binding_id"),
        cache_generation=bindparam("generation"),
        changed_at=bindparam("at"),
    )
)
_RELEASE_OF_PROJECT = _releasing(
    e.c.machine_id.in_(select(m.c.id).where(_of_project).scalar_subquery())
)
_UNBIND_PROJECT = _unbinding(update(m).where(_of_project))


class SqlMachineStore(MachineStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert_machine(self, machine: Machine) -> None:
        async with self._db.write() as session:
            try:
                await session.run(
                    _INSERT_MACHINE,
                    id=machine.id,
                    token_id=machine.token_id,
                    platform=machine.platform.value,
                    endpoint=machine.endpoint,
                    capacity=machine.capacity,
                    state=machine.state.value,
                    registered_at=to_micros(machine.registered_at),
                    last_heartbeat_at=to_micros(machine.last_heartbeat_at),
                    changed_at=to_micros(machine.changed_at),
                )
            except ConstraintViolation:
                raise DuplicateKey(machine.id) from None

    async def get_machine(self, machine_id: str) -> Machine | None:
        async with self._db.read() as session:
            row = await session.one(_MACHINE, id=machine_id)
        return None if row is None else _machine(row)

    async def list_machines(self) -> list[Machine]:
        async with self._db.read() as session:
            return [_machine(r) for r in await session.all(_MACHINES)]

    async def machine_stamp(
        self, lost_before: datetime, stale_before: datetime
    ) -> tuple[int, int, int]:
        """(last change, machines silent since lost_before, since stale_before): moves when a
        waiting build may proceed."""
        async with self._db.read() as session:
            row = await session.one(
                _STAMP, lost_before=to_micros(lost_before), stale_before=to_micros(stale_before)
            )
        assert row is not None  # an aggregate has a row
        return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)

    async def last_heard_from(self, platform: Platform, project_id: str) -> datetime | None:
        """The latest heartbeat among machines that could take the project on the platform."""
        async with self._db.read() as session:
            latest = await session.value(
                _LAST_HEARD_FROM, platform=platform.value, project_id=project_id
            )
        return None if latest is None else from_micros(latest)

    async def record_heartbeat(
        self,
        machine_id: str,
        *,
        running_binding_id: str,
        ready: bool,
        disk_used_bytes: int,
        error: str | None,
        now: datetime,
    ) -> Machine | None:
        async with self._db.write() as session:
            row = await session.one(
                _HEARTBEAT,
                id=machine_id,
                at=to_micros(now),
                ready_binding_id=running_binding_id if ready and running_binding_id else None,
                disk=disk_used_bytes,
                error=error,
            )
        return None if row is None else _machine(row)

    async def set_machine_state(self, machine_id: str, state: MachineState, now: datetime) -> bool:
        async with self._db.write() as session:
            return bool(
                await session.run(
                    _SET_STATE, id=machine_id, new_state=state.value, at=to_micros(now)
                )
            )

    async def acquire_machine(
        self,
        *,
        build_id: str,
        project_id: str,
        platform: Platform,
        now: datetime,
        lost_before: datetime,
        binding: Binding,
    ) -> Machine | None:
        micros = to_micros(now)
        async with self._db.write() as session:
            await _forget_lost_machines(session, to_micros(lost_before), micros)
        async with self._db.write() as session:
            generation = await session.value(_LOCK_PROJECT, project_id=project_id)
            if generation is None:
                return None
            own = await session.one(
                _OWN, build_id=build_id, platform=platform.value, project_id=project_id
            )
            if own is not None:
                return _machine(own)
            serving = await session.all(
                _LOCK_SERVING, project_id=project_id, platform=platform.value
            )
            if serving:
                row: Row | None = serving[0]
            else:
                row = await _claim_idle(session, project_id, platform, generation, micros, binding)
            if row is None:
                return None
            await _open_endpoint(session, build_id, platform, row["id"], micros)
            return _machine(row)

    async def set_server_certificate(
        self, machine_id: str, *, binding_id: str, cert_pem: str, key_sealed: str
    ) -> bool:
        # One row, no other lock: within the lock order whoever runs it. The conditions make
        # it the second half of the claim: a binding released or replaced meanwhile (the
        # project deleted, reset, the machine lost) gets no certificate, and of concurrent
        # callers for one binding only the first stores one.
        async with self._db.write() as session:
            changed = await session.run(
                _SET_CERTIFICATE,
                id=machine_id,
                binding_id=binding_id,
                cert_pem=cert_pem,
                key_sealed=key_sealed,
            )
            return bool(changed)

    async def release_endpoint(self, build_id: str, platform: Platform, now: datetime) -> bool:
        key = {"build_id": build_id, "platform": platform.value}
        async with self._db.write() as session:
            await session.all(_LOCK_ENDPOINT_MACHINE, **key)
            return await _release_endpoints(session, _RELEASE_ENDPOINT, to_micros(now), **key)

    async def release_idle_machine(
        self, machine_id: str, *, idle_before: datetime, now: datetime
    ) -> bool:
        """Unbind the machine if no running build holds it and it has been idle since
        idle_before (idle since its last release, or since the end of its last build)."""
        micros = to_micros(now)
        async with self._db.write() as session:
            if not await session.all(_LOCK_ONE, id=machine_id):
                return False
            held = await session.all(_HELD, id=machine_id)
            if any(row["status"] == BuildStatus.RUNNING.value for row in held):
                return False
            if held:
                # Ended builds let go of the machine when they ended.
                for row in held:
                    await session.run(
                        _RELEASE_AT,
                        build_id=row["build_id"],
                        id=machine_id,
                        at=row["finished_at"] or micros,
                    )
                last_end = max(row["finished_at"] or 0 for row in held)
                await session.run(_USED_BY, id=machine_id, last_end=last_end)
            released = await session.run(
                _RELEASE_IF_IDLE, id=machine_id, idle_before=to_micros(idle_before), at=micros
            )
            return bool(released)

    async def rebind_project_machines(
        self, project_id: str, *, binding_id: str, generation: int, now: datetime
    ) -> int:
        """Give the project's machines a new binding (their daemons restart clean)."""
        async with self._db.write() as session:
            await session.all(_LOCK_PROJECT_MACHINES, project_id=project_id)
            return await session.run(
                _REBIND,
                project_id=project_id,
                binding_id=binding_id,
                generation=generation,
                at=to_micros(now),
            )

    async def unbind_project_machines(self, project_id: str, now: datetime) -> int:
        micros = to_micros(now)
        async with self._db.write() as session:
            await session.all(_LOCK_PROJECT_MACHINES, project_id=project_id)
            await _release_endpoints(session, _RELEASE_OF_PROJECT, micros, project_id=project_id)
            return await session.run(_UNBIND_PROJECT, project_id=project_id, at=micros)


async def _release_endpoints(session: Session, release: Query, micros: int, **where: Any) -> bool:
    """Release the held endpoints that `release` matches; False when there were none."""
    released = await session.all(release, at=micros, **where)
    if not released:
        return False
    # The idle timer of each machine starts from its last release.
    machine_ids = sorted({row["machine_id"] for row in released})
    await session.run(_MARK_USED, machine_ids=machine_ids, at=micros)
    return True


async def _forget_lost_machines(session: Session, lost_before: int, micros: int) -> None:
    # Another transaction already handling one of them is not waited for: it does the same.
    ids = [row["id"] for row in await session.all(_LOCK_LOST, lost_before=lost_before)]
    if not ids:
        return
    # Builds on a lost machine get a new one at their next GetEndpoint.
    await _release_endpoints(session, _RELEASE_OF_MACHINES, micros, machine_ids=ids)
    await session.run(_FORGET, machine_ids=ids, at=micros)


async def _claim_idle(
    session: Session,
    project_id: str,
    platform: Platform,
    generation: int,
    micros: int,
    binding: Binding,
) -> Row | None:
    machine_id = await session.value(_IDLE, platform=platform.value, project_id=project_id)
    if machine_id is None:
        return None
    return await session.one(
        _CLAIM,
        id=machine_id,
        project_id=project_id,
        binding_id=binding.binding_id,
        generation=generation,
        server_name=binding.server_name,
        at=micros,
    )


async def _open_endpoint(
    session: Session, build_id: str, platform: Platform, machine_id: str, micros: int
) -> None:
    key = {"build_id": build_id, "platform": platform.value}
    if await session.one(_ENDPOINT, **key) is None:
        await session.run(_INSERT_ENDPOINT, **key, machine_id=machine_id, at=micros)
    else:
        await session.run(_REOPEN_ENDPOINT, **key, machine_id=machine_id, at=micros)
    await session.run(_USED, id=machine_id, at=micros)


def _machine(r: Row) -> Machine:
    return Machine(
        id=r["id"],
        token_id=r["token_id"],
        platform=Platform(r["platform"]),
        endpoint=r["endpoint"],
        capacity=r["capacity"],
        state=MachineState(r["state"]),
        registered_at=from_micros(r["registered_at"]),
        last_heartbeat_at=from_micros(r["last_heartbeat_at"]),
        changed_at=from_micros(r["changed_at"]),
        disk_used_bytes=r["disk_used_bytes"],
        buildkit_error=r["buildkit_error"],
        project_id=r["project_id"],
        binding_id=r["binding_id"],
        cache_generation=r["cache_generation"],
        server_name=r["server_name"],
        server_cert=r["server_cert"],
        server_key_sealed=r["server_key_sealed"],
        ready_binding_id=r["ready_binding_id"],
        last_used_at=None if r["last_used_at"] is None else from_micros(r["last_used_at"]),
    )
