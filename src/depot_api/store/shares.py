"""Shared build links over SQL (the ShareStore of store.interface)."""

from __future__ import annotations

from sqlalchemy import bindparam, delete, insert, select

from depot_api.models import Build, BuildShare
from depot_api.store import schema as t
from depot_api.store.builds import BUILD_COLUMNS, build_of_row
from depot_api.store.database import Database
from depot_api.store.driver import Query, bound
from depot_api.store.errors import ConstraintViolation, StoreUnavailable
from depot_api.store.interface import ShareStore

s, b, p = t.build_shares, t.builds, t.projects
_ROUNDS = 5

_SHARE = Query(
    select(s.c.secret_hash, s.c.sealed_secret).where(s.c.build_id == bindparam("build_id"))
)
_IS_SHARED = Query(select(s.c.build_id).where(s.c.build_id == bindparam("build_id")))
_INSERT = Query(insert(s).values(bound("build_id", "secret_hash", "sealed_secret", "created_at")))
_DELETE = Query(delete(s).where(s.c.build_id == bindparam("build_id")))
# The shared build, unless its project was deleted (as for every read of a build).
_SHARED_BUILD = Query(
    select(*BUILD_COLUMNS)
    .join(s, s.c.build_id == b.c.id)
    .join(p, p.c.id == b.c.project_id)
    .where(s.c.secret_hash == bindparam("secret_hash"), p.c.deleted_at.is_(None))
)


class SqlShareStore(ShareStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    async def share(self, build_id: str, new: BuildShare, now_us: int) -> BuildShare:
        # Bounded: each round ends unless another process shares and stops this very build
        # between our insert and our read, every time.
        for _ in range(_ROUNDS):
            async with self._db.read() as session:
                row = await session.one(_SHARE, build_id=build_id)
            if row is not None:
                return BuildShare(row["secret_hash"], row["sealed_secret"])
            try:
                async with self._db.write() as session:  # rolled back whole on a clash
                    await session.run(
                        _INSERT,
                        build_id=build_id,
                        secret_hash=new.secret_hash,
                        sealed_secret=new.sealed_secret,
                        created_at=now_us,
                    )
            except ConstraintViolation:
                continue  # another process shared it first: its link is the one
            return new
        raise StoreUnavailable(f"build {build_id} was shared and stopped again meanwhile")

    async def stop(self, build_id: str) -> bool:
        async with self._db.write() as session:
            return bool(await session.run(_DELETE, build_id=build_id))

    async def is_shared(self, build_id: str) -> bool:
        async with self._db.read() as session:
            return await session.one(_IS_SHARED, build_id=build_id) is not None

    async def shared_build(self, secret_hash: str) -> Build | None:
        async with self._db.read() as session:
            row = await session.one(_SHARED_BUILD, secret_hash=secret_hash)
        return None if row is None else build_of_row(row)
