"""Projects over SQL (the ProjectStore of store.interface): their settings, soft deletion,
cache generations, and each project's certificate authority.

The CA lives here, not with the machines: it is the project's (one row per project, made at
the project's first GetEndpoint and kept for its life), and machines only use it, by way of
the domain, which signs their server certificates with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, and_, bindparam, insert, select, tuple_, update

from depot_api.models import CachePolicy, Hardware, Project, ProjectCA
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.driver import Query, Row, bound
from depot_api.store.errors import ConstraintViolation, DuplicateKey, NameTaken
from depot_api.store.interface import Position, ProjectStore
from depot_api.store.orgs import move_auth_epoch
from depot_api.times import from_micros, to_micros

p, tk, ca_table = t.projects, t.tokens, t.project_cas

_live = and_(p.c.id == bindparam("id"), p.c.deleted_at.is_(None))
_of_orgs = and_(p.c.org_id.in_(bindparam("org_ids", expanding=True)), p.c.deleted_at.is_(None))
_after = tuple_(p.c.created_at, p.c.id) > tuple_(
    bindparam("after_created_at", type_=BigInteger), bindparam("after_id", type_=t.ID)
)

_INSERT_PROJECT = Query(
    insert(p).values(
        bound(
            "id",
            "org_id",
            "name",
            "region_id",
            "hardware",
            "keep_gb",
            "keep_days",
            "keep_bytes",
            "cache_generation",
            "created_at",
        )
    )
)
_PROJECT = Query(select(p).where(_live))
_PROJECTS_BY_ID = Query(
    select(p).where(p.c.id.in_(bindparam("ids", expanding=True)), p.c.deleted_at.is_(None))
)
_PROJECTS = Query(
    select(p).where(_of_orgs).order_by(p.c.created_at, p.c.id).limit(bindparam("limit"))
)
_PROJECTS_AFTER = Query(
    select(p).where(_of_orgs, _after).order_by(p.c.created_at, p.c.id).limit(bindparam("limit"))
)
_DELETE = Query(update(p).where(_live).values(deleted_at=bindparam("at")))
_REVOKE_TOKENS = Query(
    update(tk)
    .where(tk.c.project_id == bindparam("id"), tk.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("at"))
)
_BUMP_GENERATION = Query(
    update(p)
    .where(_live)
    .values(cache_generation=p.c.cache_generation + 1)
    .returning(p.c.cache_generation)
)
_CA = Query(select(ca_table).where(ca_table.c.project_id == bindparam("project_id")))
_INSERT_CA = Query(
    insert(ca_table).values(bound("project_id", "cert_pem", "key_sealed", "created_at"))
)


class SqlProjectStore(ProjectStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert_project(self, project: Project) -> None:
        async with self._db.write() as session:
            try:
                await session.run(
                    _INSERT_PROJECT,
                    id=project.id,
                    org_id=project.org_id,
                    name=project.name,
                    region_id=project.region_id,
                    hardware=int(project.hardware),
                    keep_gb=project.cache_policy.keep_gb,
                    keep_days=project.cache_policy.keep_days,
                    keep_bytes=project.cache_policy.keep_bytes,
                    cache_generation=project.cache_generation,
                    created_at=to_micros(project.created_at),
                )
            except ConstraintViolation as e:
                if _names_constraint(e, "uq_projects_org_name_live", ("org_id", "name")):
                    raise NameTaken(project.name) from None
                raise DuplicateKey(project.id) from None

    async def get_project(self, project_id: str) -> Project | None:
        async with self._db.read() as session:
            r = await session.one(_PROJECT, id=project_id)
        return None if r is None else _project(r)

    async def get_projects(self, project_ids: list[str]) -> list[Project]:
        if not project_ids:
            return []
        async with self._db.read() as session:
            rows = await session.all(_PROJECTS_BY_ID, ids=sorted(set(project_ids)))
        return [_project(r) for r in rows]

    async def list_projects(
        self, org_ids: list[str], after: Position | None, limit: int
    ) -> list[Project]:
        if not org_ids:
            return []
        async with self._db.read() as session:
            if after is None:
                rows = await session.all(_PROJECTS, org_ids=org_ids, limit=limit)
            else:
                rows = await session.all(
                    _PROJECTS_AFTER,
                    org_ids=org_ids,
                    after_created_at=after[0],
                    after_id=after[1],
                    limit=limit,
                )
        return [_project(r) for r in rows]

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
        async with self._db.write() as session:
            if not values:
                r = await session.one(_PROJECT, id=project_id)
            else:
                # Shaped by the fields given: compiled at each call (an update is rare).
                changed = update(p).where(_live).values(**values).returning(*p.c)
                try:
                    r = await session.one(changed, id=project_id)
                except ConstraintViolation:
                    raise NameTaken(name or "") from None
            return None if r is None else _project(r)

    async def delete_project(self, project_id: str, at: datetime) -> bool:
        micros = to_micros(at)
        async with self._db.write() as session:
            if not await session.run(_DELETE, id=project_id, at=micros):
                return False
            # In the same transaction: no moment in which the project is gone and its tokens
            # still work.
            await session.run(_REVOKE_TOKENS, id=project_id, at=micros)
            await move_auth_epoch(session)
            return True

    async def bump_cache_generation(self, project_id: str) -> int | None:
        async with self._db.write() as session:
            generation = await session.value(_BUMP_GENERATION, id=project_id)
            return None if generation is None else int(generation)

    # Certificate authorities

    async def get_project_ca(self, project_id: str) -> ProjectCA | None:
        async with self._db.read() as session:
            r = await session.one(_CA, project_id=project_id)
        return None if r is None else _ca(r)

    async def insert_project_ca(self, ca: ProjectCA) -> ProjectCA:
        try:
            async with self._db.write() as session:
                r = await session.one(_CA, project_id=ca.project_id)
                if r is not None:
                    return _ca(r)
                await session.run(
                    _INSERT_CA,
                    project_id=ca.project_id,
                    cert_pem=ca.cert_pem,
                    key_sealed=ca.key_sealed,
                    created_at=to_micros(ca.created_at),
                )
                return ca
        except ConstraintViolation:
            # Another process stored the project's CA first: theirs counts.
            stored = await self.get_project_ca(ca.project_id)
            assert stored is not None
            return stored


def _names_constraint(error: ConstraintViolation, name: str, columns: tuple[str, ...]) -> bool:
    # PostgreSQL names the index; SQLite names the columns ("projects.org_id, projects.name").
    text = error.constraint
    return name in text or all(f"projects.{c}" in text for c in columns)


def _project(r: Row) -> Project:
    return Project(
        id=r["id"],
        org_id=r["org_id"],
        name=r["name"],
        region_id=r["region_id"],
        hardware=Hardware(r["hardware"]),
        cache_policy=CachePolicy(
            keep_gb=r["keep_gb"], keep_days=r["keep_days"], keep_bytes=r["keep_bytes"]
        ),
        cache_generation=r["cache_generation"],
        created_at=from_micros(r["created_at"]),
    )


def _ca(r: Row) -> ProjectCA:
    return ProjectCA(r["project_id"], r["cert_pem"], r["key_sealed"], from_micros(r["created_at"]))
