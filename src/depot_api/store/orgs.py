"""Organizations, users, memberships and tokens over SQL (the OrgStore of store.interface)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select, update

from depot_api.models import Organization, Token, TokenKind, User
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.driver import Query, Row, Session, bound
from depot_api.store.errors import ConstraintViolation, DuplicateKey, StoreUnavailable
from depot_api.store.interface import OrgStore
from depot_api.store.schema import at_or_none, micros_or_none
from depot_api.times import from_micros, to_micros

o, u, ms, tk = t.organizations, t.users, t.memberships, t.tokens

_INSERT_ORG = Query(insert(o).values(bound("id", "name", "created_at")))
_COUNT_ORGS = Query(select(func.count()).select_from(o))
_ORGS = Query(select(o).order_by(o.c.created_at, o.c.id))
_INSERT_USER = Query(insert(u).values(bound("id", "name", "created_at")))
_USER = Query(select(u).where(u.c.id == bindparam("id")))
_MEMBERSHIP = Query(
    select(ms.c.user_id).where(
        ms.c.user_id == bindparam("user_id"), ms.c.org_id == bindparam("org_id")
    )
)
_INSERT_MEMBERSHIP = Query(insert(ms).values(bound("user_id", "org_id", "created_at")))
_ORG_IDS_OF_USER = Query(
    select(ms.c.org_id).where(ms.c.user_id == bindparam("user_id")).order_by(ms.c.org_id)
)

# A token's row, with a parameter per column (token_values gives them).
INSERT_TOKEN = insert(tk).values(
    bound(
        "id",
        "kind",
        "secret_hash",
        "description",
        "org_id",
        "user_id",
        "project_id",
        "build_id",
        "created_at",
        "expires_at",
        "revoked_at",
    )
)
_INSERT_TOKEN = Query(INSERT_TOKEN)
_TOKEN_BY_HASH = Query(select(tk).where(tk.c.secret_hash == bindparam("secret_hash")))
_TOKEN = Query(select(tk).where(tk.c.id == bindparam("id")))
_PROJECT_TOKENS = Query(
    select(tk)
    .where(
        tk.c.project_id == bindparam("project_id"),
        tk.c.kind == TokenKind.PROJECT.value,
        tk.c.revoked_at.is_(None),
    )
    .order_by(tk.c.created_at, tk.c.id)
)
_STANDING_TOKENS = Query(
    select(tk)
    .where(tk.c.kind != TokenKind.BUILD.value, tk.c.revoked_at.is_(None))
    .order_by(tk.c.created_at, tk.c.id)
)
_live_token = (tk.c.id == bindparam("id")) & tk.c.revoked_at.is_(None)
_SET_DESCRIPTION = Query(update(tk).where(_live_token).values(bound("description")))
_REVOKE = Query(update(tk).where(_live_token).values(revoked_at=bindparam("at")))
_AUTH_EPOCH = Query(select(t.auth_epoch.c.value).where(t.auth_epoch.c.id == 1))
_MOVE_AUTH_EPOCH = Query(
    update(t.auth_epoch).where(t.auth_epoch.c.id == 1).values(value=t.auth_epoch.c.value + 1)
)
_RECORD_USE = Query(
    update(tk)
    .where(
        tk.c.id == bindparam("id"),
        # Conditional, so that concurrent calls write once, and never backwards.
        or_(tk.c.last_used_at.is_(None), tk.c.last_used_at < bindparam("unless_since")),
    )
    .values(last_used_at=bindparam("at"))
)


class SqlOrgStore(OrgStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    # Organizations and users

    async def insert_organization(self, org: Organization) -> None:
        async with self._db.write() as session:
            try:
                await session.run(
                    _INSERT_ORG, id=org.id, name=org.name, created_at=to_micros(org.created_at)
                )
            except ConstraintViolation:
                raise DuplicateKey(org.id) from None

    async def count_organizations(self) -> int:
        async with self._db.read() as session:
            return int(await session.value(_COUNT_ORGS))

    async def get_organizations(self, org_ids: list[str]) -> list[Organization]:
        if not org_ids:
            return []
        async with self._db.read() as session:
            rows = await session.all(
                select(o).where(o.c.id.in_(org_ids)).order_by(o.c.created_at, o.c.id)
            )
        return [_organization(r) for r in rows]

    async def list_organizations(self) -> list[Organization]:
        async with self._db.read() as session:
            return [_organization(r) for r in await session.all(_ORGS)]

    async def insert_user(self, user: User) -> None:
        async with self._db.write() as session:
            try:
                await session.run(
                    _INSERT_USER, id=user.id, name=user.name, created_at=to_micros(user.created_at)
                )
            except ConstraintViolation:
                raise DuplicateKey(user.id) from None

    async def get_user(self, user_id: str) -> User | None:
        async with self._db.read() as session:
            r = await session.one(_USER, id=user_id)
        return (
            None
            if r is None
            else User(id=r["id"], name=r["name"], created_at=from_micros(r["created_at"]))
        )

    async def add_membership(self, user_id: str, org_id: str, at: datetime) -> bool:
        async with self._db.write() as session:
            if await session.one(_MEMBERSHIP, user_id=user_id, org_id=org_id) is not None:
                return False
            await session.run(
                _INSERT_MEMBERSHIP, user_id=user_id, org_id=org_id, created_at=to_micros(at)
            )
            await move_auth_epoch(session)  # the user's tokens reach one more organization
            return True

    async def org_ids_of_user(self, user_id: str) -> list[str]:
        async with self._db.read() as session:
            return [r["org_id"] for r in await session.all(_ORG_IDS_OF_USER, user_id=user_id)]

    # Tokens

    async def insert_token(self, token: Token) -> None:
        async with self._db.write() as session:
            await insert_token_row(session, token)

    async def find_token(self, secret_hash: str) -> Token | None:
        async with self._db.read() as session:
            r = await session.one(_TOKEN_BY_HASH, secret_hash=secret_hash)
        return None if r is None else _token(r)

    async def get_token(self, token_id: str) -> Token | None:
        async with self._db.read() as session:
            r = await session.one(_TOKEN, id=token_id)
        return None if r is None else _token(r)

    async def list_project_tokens(self, project_id: str) -> list[Token]:
        async with self._db.read() as session:
            return [_token(r) for r in await session.all(_PROJECT_TOKENS, project_id=project_id)]

    async def list_standing_tokens(self) -> list[Token]:
        async with self._db.read() as session:
            return [_token(r) for r in await session.all(_STANDING_TOKENS)]

    async def set_token_description(self, token_id: str, description: str) -> bool:
        async with self._db.write() as session:
            return bool(await session.run(_SET_DESCRIPTION, id=token_id, description=description))

    async def record_token_use(self, token_id: str, at: datetime, unless_since: datetime) -> None:
        async with self._db.write() as session:
            await session.run(
                _RECORD_USE, id=token_id, at=to_micros(at), unless_since=to_micros(unless_since)
            )

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        async with self._db.write() as session:
            if not await session.run(_REVOKE, id=token_id, at=to_micros(at)):
                return False
            await move_auth_epoch(session)
            return True

    async def auth_epoch(self) -> int:
        async with self._db.read() as session:
            epoch = await session.value(_AUTH_EPOCH)
        if epoch is None:
            # Made by the migration and never deleted. Without it no change would reach kept
            # principals: refuse every call rather than trust them.
            raise StoreUnavailable(
                "the auth_epoch table lost its row (emptied by hand?); put it back with "
                "INSERT INTO auth_epoch (id, value) VALUES (1, 0)"
            )
        return int(epoch)


async def move_auth_epoch(session: Session) -> None:
    """Move the auth epoch inside a caller's transaction: for a change that could refuse a
    token or change what it reaches, so that principals kept by servers are read again."""
    await session.run(_MOVE_AUTH_EPOCH)


async def insert_token_row(session: Session, token: Token) -> None:
    """Insert a token inside a caller's transaction (a build's token goes in with its build).
    Raises DuplicateKey on an ID or secret-hash clash."""
    try:
        await session.run(_INSERT_TOKEN, **token_values(token))
    except ConstraintViolation:
        raise DuplicateKey(token.id) from None


def token_values(token: Token) -> dict[str, Any]:
    """The parameters of INSERT_TOKEN for this token."""
    return {
        "id": token.id,
        "kind": token.kind.value,
        "secret_hash": token.secret_hash,
        "description": token.description,
        "org_id": token.org_id,
        "user_id": token.user_id,
        "project_id": token.project_id,
        "build_id": token.build_id,
        "created_at": to_micros(token.created_at),
        "expires_at": micros_or_none(token.expires_at),
        "revoked_at": micros_or_none(token.revoked_at),
    }


def _organization(r: Row) -> Organization:
    return Organization(id=r["id"], name=r["name"], created_at=from_micros(r["created_at"]))


def _token(r: Row) -> Token:
    return Token(
        id=r["id"],
        kind=TokenKind(r["kind"]),
        secret_hash=r["secret_hash"],
        description=r["description"],
        created_at=from_micros(r["created_at"]),
        org_id=r["org_id"],
        user_id=r["user_id"],
        project_id=r["project_id"],
        build_id=r["build_id"],
        expires_at=at_or_none(r["expires_at"]),
        revoked_at=at_or_none(r["revoked_at"]),
        last_used_at=at_or_none(r["last_used_at"]),
    )
