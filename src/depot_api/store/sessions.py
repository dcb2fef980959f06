"""Console sessions over SQL (the SessionStore of store.interface)."""

from __future__ import annotations

from sqlalchemy import bindparam, delete, insert, select

from depot_api.models import ConsoleSession, TokenKind
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.driver import Query, bound
from depot_api.store.interface import SessionStore

c = t.console_sessions

_INSERT = Query(
    insert(c).values(bound("session_hash", "token_hash", "token_kind", "created_at", "expires_at"))
)
_FIND = Query(
    select(c.c.session_hash, c.c.token_hash, c.c.token_kind, c.c.created_at, c.c.expires_at).where(
        c.c.session_hash == bindparam("session_hash"), c.c.expires_at > bindparam("now")
    )
)
_END = Query(delete(c).where(c.c.session_hash == bindparam("session_hash")))
_PURGE = Query(delete(c).where(c.c.expires_at <= bindparam("now")))


class SqlSessionStore(SessionStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(self, session: ConsoleSession) -> None:
        async with self._db.write() as db:
            await db.run(
                _INSERT,
                session_hash=session.session_hash,
                token_hash=session.token_hash,
                token_kind=session.token_kind.value,
                created_at=session.created_us,
                expires_at=session.expires_us,
            )

    async def find(self, session_hash: str, now_us: int) -> ConsoleSession | None:
        async with self._db.read() as db:
            row = await db.one(_FIND, session_hash=session_hash, now=now_us)
        if row is None:
            return None
        return ConsoleSession(
            row["session_hash"],
            row["token_hash"],
            TokenKind(row["token_kind"]),
            row["created_at"],
            row["expires_at"],
        )

    async def end(self, session_hash: str) -> bool:
        async with self._db.write() as db:
            return bool(await db.run(_END, session_hash=session_hash))

    async def purge_expired(self, now_us: int) -> int:
        async with self._db.write() as db:
            return await db.run(_PURGE, now=now_us)
