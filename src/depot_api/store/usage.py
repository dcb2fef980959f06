"""Usage over SQL (the UsageStore of store.interface): builds, build seconds and saved seconds
per project over a time window, and the build cache its machines hold now."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, func, select, true

from depot_api.models import MachineState, ProjectUsage
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.insights import INTERNAL_PREFIX, saved_us
from depot_api.store.interface import UsageStore

b, p, m, s = t.builds, t.projects, t.machines, t.build_steps

_BATCH = 400


def _window(project_ids: Sequence[str], start_us: int, end_us: int) -> Any:
    return and_(
        b.c.project_id.in_(project_ids), b.c.created_at >= start_us, b.c.created_at < end_us
    )


class SqlUsageStore(UsageStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    async def project_usage(
        self, project_ids: list[str], *, start_us: int, end_us: int
    ) -> list[ProjectUsage]:
        found: dict[str, ProjectUsage] = {}
        async with self._db.read() as session:
            for start in range(0, len(project_ids), _BATCH):
                batch = project_ids[start : start + _BATCH]
                names = {
                    r["id"]: r["name"]
                    for r in await session.all(
                        select(p.c.id, p.c.name).where(p.c.id.in_(batch), p.c.deleted_at.is_(None))
                    )
                }
                ran = b.c.finished_at - func.coalesce(b.c.started_at, b.c.created_at)
                builds = {
                    r["project_id"]: r
                    for r in await session.all(
                        select(
                            b.c.project_id,
                            func.count().label("count"),
                            func.sum(case((b.c.finished_at.is_not(None), ran), else_=0)).label(
                                "us"
                            ),
                        )
                        .where(_window(batch, start_us, end_us))
                        .group_by(b.c.project_id)
                    )
                }
                saved = {
                    r[0]: int(r[1] or 0)
                    for r in await session.all(
                        select(b.c.project_id, func.sum(func.coalesce(saved_us(s), 0)))
                        .select_from(s.join(b, b.c.id == s.c.build_id))
                        .where(
                            _window(batch, start_us, end_us),
                            s.c.cached == true(),
                            s.c.name.not_like(INTERNAL_PREFIX + "%"),
                        )
                        .group_by(b.c.project_id)
                    )
                }
                cache = {
                    r[0]: int(r[1] or 0)
                    for r in await session.all(
                        select(m.c.last_project_id, func.sum(m.c.disk_used_bytes))
                        .where(
                            m.c.last_project_id.in_(batch),
                            m.c.state != MachineState.GONE.value,
                        )
                        .group_by(m.c.last_project_id)
                    )
                }
                for project_id, name in names.items():
                    row = builds.get(project_id)
                    found[project_id] = ProjectUsage(
                        project_id=project_id,
                        project_name=name,
                        build_count=int(row["count"]) if row else 0,
                        build_seconds=max(int(row["us"] or 0), 0) / 1e6 if row else 0.0,
                        saved_seconds=saved.get(project_id, 0) / 1e6,
                        cache_bytes=cache.get(project_id, 0),
                    )
        return [found[pid] for pid in project_ids if pid in found]
