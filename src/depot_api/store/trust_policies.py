"""Trust policies over SQL (the TrustPolicyStore of store.interface): which CI identities may
create builds in a project. A removal marks the row; nothing is deleted, so a build's
trust_policy_id always names a policy that can be read."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, bindparam, insert, select, update

from depot_api.models import CiProvider, TrustPolicy
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.driver import Query, Row, bound
from depot_api.store.errors import ConstraintViolation, DuplicateKey
from depot_api.store.interface import TrustPolicyStore
from depot_api.times import from_micros, to_micros

tp, p = t.trust_policies, t.projects

_INSERT = Query(
    insert(tp).values(bound("id", "project_id", "provider", "owner", "name", "created_at"))
)
# A live project's live policies, oldest first.
_LIVE = Query(
    select(tp)
    .join(p, p.c.id == tp.c.project_id)
    .where(
        tp.c.project_id == bindparam("project_id"),
        tp.c.removed_at.is_(None),
        p.c.deleted_at.is_(None),
    )
    .order_by(tp.c.created_at, tp.c.id)
)
_REMOVE = Query(
    update(tp)
    .where(
        and_(
            tp.c.id == bindparam("id"),
            tp.c.project_id == bindparam("project_id"),
            tp.c.removed_at.is_(None),
        )
    )
    .values(removed_at=bindparam("at"))
)
_ONE = Query(select(tp).where(tp.c.id == bindparam("id")))


class SqlTrustPolicyStore(TrustPolicyStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert_trust_policy(self, policy: TrustPolicy) -> None:
        async with self._db.write() as session:
            try:
                await session.run(
                    _INSERT,
                    id=policy.id,
                    project_id=policy.project_id,
                    provider=policy.provider.value,
                    owner=policy.owner,
                    name=policy.name,
                    created_at=to_micros(policy.created_at),
                )
            except ConstraintViolation:
                raise DuplicateKey(policy.id) from None

    async def list_trust_policies(self, project_id: str) -> list[TrustPolicy]:
        async with self._db.read() as session:
            rows = await session.all(_LIVE, project_id=project_id)
        return [_policy(r) for r in rows]

    async def get_trust_policy(self, policy_id: str) -> TrustPolicy | None:
        async with self._db.read() as session:
            row = await session.one(_ONE, id=policy_id)
        return None if row is None else _policy(row)

    async def remove_trust_policy(self, project_id: str, policy_id: str, at: datetime) -> bool:
        async with self._db.write() as session:
            changed = await session.run(
                _REMOVE, id=policy_id, project_id=project_id, at=to_micros(at)
            )
        return changed > 0


def _policy(row: Row) -> TrustPolicy:
    removed_at = row["removed_at"]
    return TrustPolicy(
        id=row["id"],
        project_id=row["project_id"],
        provider=CiProvider(row["provider"]),
        owner=row["owner"],
        name=row["name"],
        created_at=from_micros(row["created_at"]),
        removed_at=None if removed_at is None else from_micros(removed_at),
    )
