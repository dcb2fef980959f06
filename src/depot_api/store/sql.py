"""The Store over SQLAlchemy Core: one implementation for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, func, or_, select, tuple_, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from depot_api.models import (
    Build,
    BuildStatus,
    CachePolicy,
    Hardware,
    Organization,
    Project,
    StatusReport,
    Token,
    TokenKind,
    User,
)
from depot_api.store import schema as t
from depot_api.store.errors import DuplicateKey, NameTaken, StoreUnavailable
from depot_api.store.interface import Position
from depot_api.store.sql_machines import MachineQueries
from depot_api.store.sqlite_inline import InlineEngine
from depot_api.times import from_micros, to_micros


class SqlStore(MachineQueries):
    """Each public method runs in its own transaction on a pooled connection."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._async_engine = engine
        # SQLite's statements run inline: faster than aiosqlite's thread hand-offs (see there).
        self._engine: AsyncEngine | InlineEngine = (
            InlineEngine.for_url(engine.url) if engine.dialect.name == "sqlite" else engine
        )
        # Writes ask SQLite for the write lock up front (BEGIN IMMEDIATE), so two writers never
        # deadlock upgrading read locks; see depot_api.store.engine.
        self._write_engine = self._engine.execution_options(depot_write=True)
        # Every read here is a single SELECT, which needs no BEGIN and ROLLBACK around it: on
        # SQLite the statement is its own transaction, on PostgreSQL autocommit makes it one
        # round trip instead of three.
        self._read_engine = (
            self._engine.execution_options(depot_single_statement=True)
            if isinstance(self._engine, InlineEngine)
            else self._engine.execution_options(isolation_level="AUTOCOMMIT")
        )

    async def close(self) -> None:
        await self._engine.dispose()
        await self._async_engine.dispose()

    async def ping(self) -> None:
        # Reading the migration table shows the database is reachable, readable and migrated.
        async with self._read() as conn:
            await conn.exec_driver_sql("SELECT version_num FROM alembic_version")

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with _translated(), self._read_engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with _translated(), self._write_engine.begin() as conn:
            yield conn

    # Organizations and users

    async def insert_organization(self, org: Organization) -> None:
        async with self._write() as conn:
            await conn.execute(
                t.organizations.insert().values(
                    id=org.id, name=org.name, created_at=to_micros(org.created_at)
                )
            )

    async def count_organizations(self) -> int:
        async with self._read() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(t.organizations))).scalar_one()
            )

    async def get_organizations(self, org_ids: list[str]) -> list[Organization]:
        if not org_ids:
            return []
        async with self._read() as conn:
            rows = await conn.execute(
                select(t.organizations)
                .where(t.organizations.c.id.in_(org_ids))
                .order_by(t.organizations.c.created_at, t.organizations.c.id)
            )
            return [
                Organization(id=r.id, name=r.name, created_at=from_micros(r.created_at))
                for r in rows
            ]

    async def list_organizations(self) -> list[Organization]:
        async with self._read() as conn:
            rows = await conn.execute(
                select(t.organizations).order_by(t.organizations.c.created_at, t.organizations.c.id)
            )
            return [
                Organization(id=r.id, name=r.name, created_at=from_micros(r.created_at))
                for r in rows
            ]

    async def insert_user(self, user: User) -> None:
        async with self._write() as conn:
            await conn.execute(
                t.users.insert().values(
                    id=user.id, name=user.name, created_at=to_micros(user.created_at)
                )
            )

    async def get_user(self, user_id: str) -> User | None:
        async with self._read() as conn:
            r = (await conn.execute(select(t.users).where(t.users.c.id == user_id))).first()
            return (
                None
                if r is None
                else User(id=r.id, name=r.name, created_at=from_micros(r.created_at))
            )

    async def add_membership(self, user_id: str, org_id: str, at: datetime) -> bool:
        async with self._write() as conn:
            existing = await conn.execute(
                select(t.memberships.c.user_id).where(
                    t.memberships.c.user_id == user_id, t.memberships.c.org_id == org_id
                )
            )
            if existing.first() is not None:
                return False
            await conn.execute(
                t.memberships.insert().values(
                    user_id=user_id, org_id=org_id, created_at=to_micros(at)
                )
            )
            return True

    async def org_ids_of_user(self, user_id: str) -> list[str]:
        async with self._read() as conn:
            rows = await conn.execute(
                select(t.memberships.c.org_id)
                .where(t.memberships.c.user_id == user_id)
                .order_by(t.memberships.c.org_id)
            )
            return [r.org_id for r in rows]

    # Tokens

    async def insert_token(self, token: Token) -> None:
        async with self._write() as conn:
            await _insert_token(conn, token)

    async def find_token(self, secret_hash: str) -> Token | None:
        async with self._read() as conn:
            r = (
                await conn.execute(select(t.tokens).where(t.tokens.c.secret_hash == secret_hash))
            ).first()
            return None if r is None else _token(r)

    async def get_token(self, token_id: str) -> Token | None:
        async with self._read() as conn:
            r = (await conn.execute(select(t.tokens).where(t.tokens.c.id == token_id))).first()
            return None if r is None else _token(r)

    async def list_project_tokens(self, project_id: str) -> list[Token]:
        async with self._read() as conn:
            rows = await conn.execute(
                select(t.tokens)
                .where(
                    t.tokens.c.project_id == project_id,
                    t.tokens.c.kind == TokenKind.PROJECT.value,
                    t.tokens.c.revoked_at.is_(None),
                )
                .order_by(t.tokens.c.created_at, t.tokens.c.id)
            )
            return [_token(r) for r in rows]

    async def list_standing_tokens(self) -> list[Token]:
        async with self._read() as conn:
            rows = await conn.execute(
                select(t.tokens)
                .where(
                    t.tokens.c.kind != TokenKind.BUILD.value,
                    t.tokens.c.revoked_at.is_(None),
                )
                .order_by(t.tokens.c.created_at, t.tokens.c.id)
            )
            return [_token(r) for r in rows]

    async def set_token_description(self, token_id: str, description: str) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                update(t.tokens)
                .where(t.tokens.c.id == token_id, t.tokens.c.revoked_at.is_(None))
                .values(description=description)
            )
            return bool(result.rowcount)

    async def record_token_use(self, token_id: str, at: datetime, unless_since: datetime) -> None:
        last_used = t.tokens.c.last_used_at
        async with self._write() as conn:
            await conn.execute(
                update(t.tokens)
                .where(
                    t.tokens.c.id == token_id,
                    # Conditional, so that concurrent calls write once, and never backwards.
                    or_(last_used.is_(None), last_used < to_micros(unless_since)),
                )
                .values(last_used_at=to_micros(at))
            )

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                update(t.tokens)
                .where(t.tokens.c.id == token_id, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=to_micros(at))
            )
            return bool(result.rowcount)

    # Projects

    async def insert_project(self, project: Project) -> None:
        async with self._write() as conn:
            try:
                await conn.execute(t.projects.insert().values(**_project_row(project)))
            except IntegrityError as e:
                if _names_constraint(e, "uq_projects_org_name_live", ("org_id", "name")):
                    raise NameTaken(project.name) from None
                raise DuplicateKey(project.id) from None

    async def get_project(self, project_id: str) -> Project | None:
        async with self._read() as conn:
            r = (
                await conn.execute(
                    select(t.projects).where(
                        t.projects.c.id == project_id, t.projects.c.deleted_at.is_(None)
                    )
                )
            ).first()
            return None if r is None else _project(r)

    async def list_projects(
        self, org_ids: list[str], after: Position | None, limit: int
    ) -> list[Project]:
        if not org_ids:
            return []
        p = t.projects
        query = select(p).where(p.c.org_id.in_(org_ids), p.c.deleted_at.is_(None))
        if after is not None:
            query = query.where(tuple_(p.c.created_at, p.c.id) > tuple_(*after))
        query = query.order_by(p.c.created_at, p.c.id).limit(limit)
        async with self._read() as conn:
            return [_project(r) for r in await conn.execute(query)]

    async def update_project(
        self,
        project_id: str,
        *,
        name: str | None = None,
        region_id: str | None = None,
        hardware: Hardware | None = None,
        cache_policy: CachePolicy | None = None,
    ) -> Project | None:
        values: dict[str, Any] = {}
        if name is not None:
            values["name"] = name
        if region_id is not None:
            values["region_id"] = region_id
        if hardware is not None:
            values["hardware"] = int(hardware)
        if cache_policy is not None:
            values.update(
                keep_gb=cache_policy.keep_gb,
                keep_days=cache_policy.keep_days,
                keep_bytes=cache_policy.keep_bytes,
            )
        p = t.projects
        live = and_(p.c.id == project_id, p.c.deleted_at.is_(None))
        async with self._write() as conn:
            if values:
                try:
                    await conn.execute(update(p).where(live).values(**values))
                except IntegrityError:
                    raise NameTaken(name or "") from None
            r = (await conn.execute(select(p).where(live))).first()
            return None if r is None else _project(r)

    async def delete_project(self, project_id: str, at: datetime) -> bool:
        micros = to_micros(at)
        p = t.projects
        async with self._write() as conn:
            result = await conn.execute(
                update(p)
                .where(p.c.id == project_id, p.c.deleted_at.is_(None))
                .values(deleted_at=micros)
            )
            if not result.rowcount:
                return False
            await conn.execute(
                update(t.tokens)
                .where(t.tokens.c.project_id == project_id, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=micros)
            )
            return True

    async def bump_cache_generation(self, project_id: str) -> int | None:
        p = t.projects
        live = and_(p.c.id == project_id, p.c.deleted_at.is_(None))
        async with self._write() as conn:
            result = await conn.execute(
                update(p).where(live).values(cache_generation=p.c.cache_generation + 1)
            )
            if not result.rowcount:
                return None
            return int((await conn.execute(select(p.c.cache_generation).where(live))).scalar_one())

    # Builds

    async def insert_build(self, build: Build, token: Token) -> None:
        async with self._write() as conn:
            try:
                await conn.execute(
                    t.builds.insert().values(
                        id=build.id,
                        project_id=build.project_id,
                        org_id=build.org_id,
                        status=build.status.value,
                        created_at=to_micros(build.created_at),
                        started_at=_micros_or_none(build.started_at),
                        finished_at=_micros_or_none(build.finished_at),
                        error_message=build.error_message,
                    )
                )
            except IntegrityError:
                raise DuplicateKey(build.id) from None
            await _insert_token(conn, token)

    async def get_build(self, build_id: str) -> Build | None:
        b, p = t.builds, t.projects
        query = (
            select(b)
            .join(p, p.c.id == b.c.project_id)
            .where(b.c.id == build_id, p.c.deleted_at.is_(None))
        )
        async with self._read() as conn:
            r = (await conn.execute(query)).first()
            return None if r is None else _build(r)

    async def list_builds(
        self, project_id: str, before: Position | None, limit: int
    ) -> list[Build]:
        b = t.builds
        query = select(b).where(b.c.project_id == project_id)
        if before is not None:
            query = query.where(tuple_(b.c.created_at, b.c.id) < tuple_(*before))
        query = query.order_by(b.c.created_at.desc(), b.c.id.desc()).limit(limit)
        async with self._read() as conn:
            return [_build(r) for r in await conn.execute(query)]

    async def finish_build(
        self, build_id: str, status: BuildStatus, at: datetime, error_message: str | None
    ) -> Build | None:
        b = t.builds
        async with self._write() as conn:
            # The status condition makes the transition atomic: of concurrent finishers, in
            # this process or any other, exactly one update matches a RUNNING row.
            await conn.execute(
                update(b)
                .where(b.c.id == build_id, b.c.status == BuildStatus.RUNNING.value)
                .values(status=status.value, finished_at=to_micros(at), error_message=error_message)
            )
            r = (await conn.execute(select(b).where(b.c.id == build_id))).first()
            return None if r is None else _build(r)

    async def insert_status_report(
        self, build_id: str, received_at: datetime, report: bytes, *, max_total_bytes: int
    ) -> bool:
        r = t.build_status_reports
        async with self._write() as conn:
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
        async with self._read() as conn:
            return [
                StatusReport(row.build_id, from_micros(row.received_at), bytes(row.report))
                for row in await conn.execute(query)
            ]


async def _insert_token(conn: AsyncConnection, token: Token) -> None:
    try:
        await conn.execute(
            t.tokens.insert().values(
                id=token.id,
                kind=token.kind.value,
                secret_hash=token.secret_hash,
                description=token.description,
                org_id=token.org_id,
                user_id=token.user_id,
                project_id=token.project_id,
                build_id=token.build_id,
                created_at=to_micros(token.created_at),
                expires_at=_micros_or_none(token.expires_at),
                revoked_at=_micros_or_none(token.revoked_at),
            )
        )
    except IntegrityError:
        raise DuplicateKey(token.id) from None


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    """Report the database's own operational failures as StoreUnavailable."""
    try:
        yield
    except IntegrityError:
        raise
    except (OperationalError, DBAPIError, PoolTimeout, OSError) as e:
        raise StoreUnavailable(type(e).__name__) from e


def _names_constraint(error: IntegrityError, name: str, columns: tuple[str, ...]) -> bool:
    # PostgreSQL names the index; SQLite names the columns ("projects.org_id, projects.name").
    text = str(error.orig)
    return name in text or all(f"projects.{c}" in text for c in columns)


def _micros_or_none(at: datetime | None) -> int | None:
    return None if at is None else to_micros(at)


def _at_or_none(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _project_row(project: Project) -> Mapping[str, Any]:
    return {
        "id": project.id,
        "org_id": project.org_id,
        "name": project.name,
        "region_id": project.region_id,
        "hardware": int(project.hardware),
        "keep_gb": project.cache_policy.keep_gb,
        "keep_days": project.cache_policy.keep_days,
        "keep_bytes": project.cache_policy.keep_bytes,
        "cache_generation": project.cache_generation,
        "created_at": to_micros(project.created_at),
    }


def _project(r: Row[Any]) -> Project:
    return Project(
        id=r.id,
        org_id=r.org_id,
        name=r.name,
        region_id=r.region_id,
        hardware=Hardware(r.hardware),
        cache_policy=CachePolicy(keep_gb=r.keep_gb, keep_days=r.keep_days, keep_bytes=r.keep_bytes),
        cache_generation=r.cache_generation,
        created_at=from_micros(r.created_at),
    )


def _token(r: Row[Any]) -> Token:
    return Token(
        id=r.id,
        kind=TokenKind(r.kind),
        secret_hash=r.secret_hash,
        description=r.description,
        created_at=from_micros(r.created_at),
        org_id=r.org_id,
        user_id=r.user_id,
        project_id=r.project_id,
        build_id=r.build_id,
        expires_at=_at_or_none(r.expires_at),
        revoked_at=_at_or_none(r.revoked_at),
        last_used_at=_at_or_none(r.last_used_at),
    )


def _build(r: Row[Any]) -> Build:
    return Build(
        id=r.id,
        project_id=r.project_id,
        org_id=r.org_id,
        status=BuildStatus(r.status),
        created_at=from_micros(r.created_at),
        started_at=_at_or_none(r.started_at),
        finished_at=_at_or_none(r.finished_at),
        error_message=r.error_message,
    )
