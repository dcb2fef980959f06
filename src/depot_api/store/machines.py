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

from sqlalchemy import Row, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from depot_api.models import Binding, BuildStatus, Machine, MachineState, Platform
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.errors import DuplicateKey
from depot_api.store.interface import MachineStore
from depot_api.times import from_micros, to_micros

m, e, b, p = t.machines, t.build_endpoints, t.builds, t.projects


async def _lock_machines(
    conn: AsyncConnection, where: Any, *, skip_locked: bool = False
) -> list[str]:
    """Lock the matching machine rows in ID order (PostgreSQL); return their IDs."""
    query = select(m.c.id).where(where).order_by(m.c.id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=skip_locked)
    return [r.id for r in await conn.execute(query)]


class SqlMachineStore(MachineStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert_machine(self, machine: Machine) -> None:
        async with self._db.write() as conn:
            try:
                await conn.execute(
                    insert(m).values(
                        id=machine.id,
                        token_id=machine.token_id,
                        platform=machine.platform.value,
                        endpoint=machine.endpoint,
                        capacity=machine.capacity,
                        state=machine.state.value,
                        disk_used_bytes=0,
                        registered_at=to_micros(machine.registered_at),
                        last_heartbeat_at=to_micros(machine.last_heartbeat_at),
                        changed_at=to_micros(machine.changed_at),
                    )
                )
            except IntegrityError:
                raise DuplicateKey(machine.id) from None

    async def get_machine(self, machine_id: str) -> Machine | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(m).where(m.c.id == machine_id))).first()
            return None if row is None else _machine(row)

    async def list_machines(self) -> list[Machine]:
        async with self._db.read() as conn:
            return [_machine(r) for r in await conn.execute(select(m).order_by(m.c.registered_at))]

    async def machine_stamp(
        self, lost_before: datetime, stale_before: datetime
    ) -> tuple[int, int, int]:
        """(last change, machines silent since lost_before, since stale_before): moves when a
        waiting build may proceed."""
        live = m.c.state != MachineState.GONE.value
        lost = and_(live, m.c.last_heartbeat_at < to_micros(lost_before))
        stale = and_(live, m.c.last_heartbeat_at < to_micros(stale_before))
        query = select(
            func.max(m.c.changed_at), func.count().filter(lost), func.count().filter(stale)
        )
        async with self._db.read() as conn:
            changed, lost_count, stale_count = (await conn.execute(query)).one()
            return int(changed or 0), int(lost_count or 0), int(stale_count or 0)

    async def last_heard_from(self, platform: Platform, project_id: str) -> datetime | None:
        """The latest heartbeat among machines that could take the project on the platform.

        A machine bound to another project counts (it is released once idle); a draining one
        counts only when bound to this project (it takes no new one); a gone one does not (a
        heartbeat makes it active again)."""
        could_serve = or_(
            m.c.state == MachineState.ACTIVE.value,
            and_(m.c.state == MachineState.DRAINING.value, m.c.project_id == project_id),
        )
        query = select(func.max(m.c.last_heartbeat_at)).where(
            m.c.platform == platform.value, could_serve
        )
        async with self._db.read() as conn:
            latest = (await conn.execute(query)).scalar_one_or_none()
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
        micros = to_micros(now)
        async with self._db.write() as conn:
            row = (await conn.execute(select(m).where(m.c.id == machine_id))).first()
            if row is None:
                return None
            ready_binding = running_binding_id if ready and running_binding_id else None
            values: dict[str, Any] = {
                "last_heartbeat_at": micros,
                "ready_binding_id": ready_binding,
                "disk_used_bytes": disk_used_bytes,
                "buildkit_error": error,
            }
            if row.state == MachineState.GONE.value:
                values["state"] = MachineState.ACTIVE.value  # it came back
            if ready_binding != row.ready_binding_id or "state" in values:
                values["changed_at"] = micros
            await conn.execute(update(m).where(m.c.id == machine_id).values(**values))
            after = (await conn.execute(select(m).where(m.c.id == machine_id))).first()
            assert after is not None
            return _machine(after)

    async def set_machine_state(self, machine_id: str, state: MachineState, now: datetime) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                update(m)
                .where(m.c.id == machine_id)
                .values(state=state.value, changed_at=to_micros(now))
            )
            return bool(result.rowcount)

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
        async with self._db.write() as conn:
            await _forget_lost_machines(conn, to_micros(lost_before), micros)
        async with self._db.write() as conn:
            locked = select(p.c.cache_generation).where(
                p.c.id == project_id, p.c.deleted_at.is_(None)
            )
            if conn.dialect.name == "postgresql":
                locked = locked.with_for_update(key_share=True)
            generation = (await conn.execute(locked)).scalar_one_or_none()
            if generation is None:
                return None
            serving = and_(
                m.c.project_id == project_id,
                m.c.platform == platform.value,
                m.c.state != MachineState.GONE.value,
            )
            own = (
                await conn.execute(
                    select(m)
                    .join(e, e.c.machine_id == m.c.id)
                    .where(
                        e.c.build_id == build_id,
                        e.c.platform == platform.value,
                        e.c.released_at.is_(None),
                        serving,
                    )
                )
            ).first()
            if own is not None:
                return _machine(own)
            serving_ids = await _lock_machines(conn, serving)
            if serving_ids:
                row = (await conn.execute(select(m).where(m.c.id == serving_ids[0]))).first()
            else:
                row = await _claim_idle(conn, project_id, platform, generation, micros, binding)
            if row is None:
                return None
            await _open_endpoint(conn, build_id, platform, row.id, micros)
            return _machine(row)

    async def set_server_certificate(
        self, machine_id: str, *, binding_id: str, cert_pem: str, key_sealed: str
    ) -> bool:
        # One row, no other lock: within the lock order whoever runs it. The conditions make
        # it the second half of the claim: a binding released or replaced meanwhile (the
        # project deleted, reset, the machine lost) gets no certificate, and of concurrent
        # callers for one binding only the first stores one.
        async with self._db.write() as conn:
            result = await conn.execute(
                update(m)
                .where(
                    m.c.id == machine_id,
                    m.c.binding_id == binding_id,
                    m.c.server_cert.is_(None),
                )
                .values(server_cert=cert_pem, server_key_sealed=key_sealed)
            )
            return bool(result.rowcount)

    async def release_endpoint(self, build_id: str, platform: Platform, now: datetime) -> bool:
        key = and_(e.c.build_id == build_id, e.c.platform == platform.value)
        async with self._db.write() as conn:
            machine = select(e.c.machine_id).where(key, e.c.released_at.is_(None))
            await _lock_machines(conn, m.c.id.in_(machine.scalar_subquery()))
            return await _release_endpoints(conn, key, to_micros(now))

    async def release_idle_machine(
        self, machine_id: str, *, idle_before: datetime, now: datetime
    ) -> bool:
        """Unbind the machine if no running build holds it and it has been idle since
        idle_before (idle since its last release, or since the end of its last build)."""
        async with self._db.write() as conn:
            if not await _lock_machines(conn, m.c.id == machine_id):
                return False
            held = (
                await conn.execute(
                    select(e.c.build_id, b.c.status, b.c.finished_at)
                    .join(b, b.c.id == e.c.build_id)
                    .where(e.c.machine_id == machine_id, e.c.released_at.is_(None))
                )
            ).all()
            if any(row.status == BuildStatus.RUNNING.value for row in held):
                return False
            if held:
                # Ended builds let go of the machine when they ended.
                for row in held:
                    await conn.execute(
                        update(e)
                        .where(e.c.build_id == row.build_id, e.c.machine_id == machine_id)
                        .values(released_at=row.finished_at or to_micros(now))
                    )
                last_end = max(row.finished_at or 0 for row in held)
                await conn.execute(
                    update(m)
                    .where(
                        m.c.id == machine_id,
                        or_(m.c.last_used_at.is_(None), m.c.last_used_at < last_end),
                    )
                    .values(last_used_at=last_end)
                )
            result = await conn.execute(
                update(m)
                .where(
                    m.c.id == machine_id,
                    m.c.project_id.is_not(None),
                    or_(m.c.last_used_at.is_(None), m.c.last_used_at < to_micros(idle_before)),
                )
                .values(**_unbound(to_micros(now)))
            )
            return bool(result.rowcount)

    async def rebind_project_machines(
        self, project_id: str, *, binding_id: str, generation: int, now: datetime
    ) -> int:
        """Give the project's machines a new binding (their daemons restart clean)."""
        async with self._db.write() as conn:
            await _lock_machines(conn, m.c.project_id == project_id)
            result = await conn.execute(
                update(m)
                .where(m.c.project_id == project_id)
                .values(
                    binding_id=binding_id, cache_generation=generation, changed_at=to_micros(now)
                )
            )
            return int(result.rowcount)

    async def unbind_project_machines(self, project_id: str, now: datetime) -> int:
        micros = to_micros(now)
        async with self._db.write() as conn:
            await _lock_machines(conn, m.c.project_id == project_id)
            machine_ids = select(m.c.id).where(m.c.project_id == project_id).scalar_subquery()
            await _release_endpoints(conn, e.c.machine_id.in_(machine_ids), micros)
            result = await conn.execute(
                update(m).where(m.c.project_id == project_id).values(**_unbound(micros))
            )
            return int(result.rowcount)


async def _release_endpoints(conn: AsyncConnection, where: Any, micros: int) -> bool:
    held = [
        (r.build_id, r.machine_id)
        for r in await conn.execute(
            select(e.c.build_id, e.c.machine_id).where(where, e.c.released_at.is_(None))
        )
    ]
    if not held:
        return False
    await conn.execute(update(e).where(where, e.c.released_at.is_(None)).values(released_at=micros))
    # The idle timer of each machine starts from its last release.
    await conn.execute(
        update(m).where(m.c.id.in_({machine for _, machine in held})).values(last_used_at=micros)
    )
    return True


async def _forget_lost_machines(conn: AsyncConnection, lost_before: int, micros: int) -> None:
    lost = and_(m.c.state != MachineState.GONE.value, m.c.last_heartbeat_at < lost_before)
    # Another transaction already handling one of them is not waited for: it does the same.
    ids = await _lock_machines(conn, lost, skip_locked=True)
    if not ids:
        return
    # Builds on a lost machine get a new one at their next GetEndpoint.
    await _release_endpoints(conn, e.c.machine_id.in_(ids), micros)
    await conn.execute(
        update(m).where(m.c.id.in_(ids)).values(state=MachineState.GONE.value, **_unbound(micros))
    )


async def _claim_idle(
    conn: AsyncConnection,
    project_id: str,
    platform: Platform,
    generation: int,
    micros: int,
    binding: Binding,
) -> Row[Any] | None:
    idle = (
        select(m.c.id)
        .where(
            m.c.platform == platform.value,
            m.c.state == MachineState.ACTIVE.value,
            m.c.project_id.is_(None),
        )
        # Cache affinity: a machine that served this project before still has its cache.
        .order_by((m.c.last_project_id == project_id).desc(), m.c.last_used_at)
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        idle = idle.with_for_update(skip_locked=True)
    machine_id = (await conn.execute(idle)).scalar_one_or_none()
    if machine_id is None:
        return None
    result = await conn.execute(
        update(m)
        .where(m.c.id == machine_id, m.c.project_id.is_(None))  # never two projects
        .values(
            project_id=project_id,
            last_project_id=project_id,
            binding_id=binding.binding_id,
            cache_generation=generation,
            server_name=binding.server_name,
            # The certificate follows (set_server_certificate): minting it here would hold
            # the project's row and this machine's locked meanwhile.
            server_cert=None,
            server_key_sealed=None,
            last_used_at=micros,
            changed_at=micros,
        )
    )
    if not result.rowcount:
        return None
    return (await conn.execute(select(m).where(m.c.id == machine_id))).first()


async def _open_endpoint(
    conn: AsyncConnection, build_id: str, platform: Platform, machine_id: str, micros: int
) -> None:
    key = and_(e.c.build_id == build_id, e.c.platform == platform.value)
    existing = (await conn.execute(select(e.c.build_id).where(key))).first()
    if existing is None:
        await conn.execute(
            insert(e).values(
                build_id=build_id,
                platform=platform.value,
                machine_id=machine_id,
                acquired_at=micros,
            )
        )
    else:
        await conn.execute(
            update(e).where(key).values(machine_id=machine_id, acquired_at=micros, released_at=None)
        )
    await conn.execute(update(m).where(m.c.id == machine_id).values(last_used_at=micros))


def _unbound(micros: int) -> dict[str, Any]:
    return {
        "project_id": None,
        "binding_id": None,
        "cache_generation": None,
        "server_name": None,
        "server_cert": None,
        "server_key_sealed": None,
        "ready_binding_id": None,
        "changed_at": micros,
    }


def _machine(r: Row[Any]) -> Machine:
    return Machine(
        id=r.id,
        token_id=r.token_id,
        platform=Platform(r.platform),
        endpoint=r.endpoint,
        capacity=r.capacity,
        state=MachineState(r.state),
        registered_at=from_micros(r.registered_at),
        last_heartbeat_at=from_micros(r.last_heartbeat_at),
        changed_at=from_micros(r.changed_at),
        disk_used_bytes=r.disk_used_bytes,
        buildkit_error=r.buildkit_error,
        project_id=r.project_id,
        binding_id=r.binding_id,
        cache_generation=r.cache_generation,
        server_name=r.server_name,
        server_cert=r.server_cert,
        server_key_sealed=r.server_key_sealed,
        ready_binding_id=r.ready_binding_id,
        last_used_at=None if r.last_used_at is None else from_micros(r.last_used_at),
    )
