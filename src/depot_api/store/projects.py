"""Projects over SQL (the ProjectStore of store.interface): their settings, soft deletion,
cache generations, and each project's certificate authority.

The CA lives here, not with the machines: it is the project's (one row per project, made at
the project's first GetEndpoint and kept for its life), and machines only use it, by way of
the domain, which signs their server certificates with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from depot_api.models import CachePolicy, Hardware, Project, ProjectCA
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.errors import DuplicateKey, NameTaken
from depot_api.store.interface import Position, ProjectStore
from depot_api.times import from_micros, to_micros


class SqlProjectStore(ProjectStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert_project(self, project: Project) -> None:
        async with self._db.write() as conn:
            try:
                await conn.execute(t.projects.insert().values(**_project_row(project)))
            except IntegrityError as e:
                if _names_constraint(e, "uq_projects_org_name_live", ("org_id", "name")):
                    raise NameTaken(project.name) from None
                raise DuplicateKey(project.id) from None

    async def get_project(self, project_id: str) -> Project | None:
        async with self._db.read() as conn:
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
        async with self._db.read() as conn:
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
        async with self._db.write() as conn:
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
        async with self._db.write() as conn:
            result = await conn.execute(
                update(p)
                .where(p.c.id == project_id, p.c.deleted_at.is_(None))
                .values(deleted_at=micros)
            )
            if not result.rowcount:
                return False
            # In the same transaction: no moment in which the project is gone and its tokens
            # still work.
            await conn.execute(
                update(t.tokens)
                .where(t.tokens.c.project_id == project_id, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=micros)
            )
            return True

    async def bump_cache_generation(self, project_id: str) -> int | None:
        p = t.projects
        live = and_(p.c.id == project_id, p.c.deleted_at.is_(None))
        async with self._db.write() as conn:
            result = await conn.execute(
                update(p).where(live).values(cache_generation=p.c.cache_generation + 1)
            )
            if not result.rowcount:
                return None
            return int((await conn.execute(select(p.c.cache_generation).where(live))).scalar_one())

    # Certificate authorities

    async def get_project_ca(self, project_id: str) -> ProjectCA | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(t.project_cas).where(t.project_cas.c.project_id == project_id)
                )
            ).first()
            return None if row is None else _ca(row)

    async def insert_project_ca(self, ca: ProjectCA) -> ProjectCA:
        ca_table = t.project_cas
        try:
            async with self._db.write() as conn:
                row = (
                    await conn.execute(
                        select(ca_table).where(ca_table.c.project_id == ca.project_id)
                    )
                ).first()
                if row is not None:
                    return _ca(row)
                await conn.execute(
                    insert(ca_table).values(
                        project_id=ca.project_id,
                        cert_pem=ca.cert_pem,
                        key_sealed=ca.key_sealed,
                        created_at=to_micros(ca.created_at),
                    )
                )
                return ca
        except IntegrityError:
            # Another process stored the project's CA first: theirs counts.
            stored = await self.get_project_ca(ca.project_id)
            assert stored is not None
            return stored


def _names_constraint(error: IntegrityError, name: str, columns: tuple[str, ...]) -> bool:
    # PostgreSQL names the index; SQLite names the columns ("projects.org_id, projects.name").
    text = str(error.orig)
    return name in text or all(f"projects.{c}" in text for c in columns)


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


def _ca(r: Row[Any]) -> ProjectCA:
    return ProjectCA(r.project_id, r.cert_pem, r.key_sealed, from_micros(r.created_at))
