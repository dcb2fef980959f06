"""Organizations, users, memberships and tokens over SQL (the OrgStore of store.interface)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from depot_api.models import Organization, Token, TokenKind, User
from depot_api.store import schema as t
from depot_api.store.database import Database
from depot_api.store.errors import DuplicateKey
from depot_api.store.interface import OrgStore
from depot_api.store.schema import at_or_none, micros_or_none
from depot_api.times import from_micros, to_micros


class SqlOrgStore(OrgStore):
    def __init__(self, database: Database) -> None:
        self._db = database

    # Organizations and users

    async def insert_organization(self, org: Organization) -> None:
        async with self._db.write() as conn:
            try:
                await conn.execute(
                    t.organizations.insert().values(
                        id=org.id, name=org.name, created_at=to_micros(org.created_at)
                    )
                )
            except IntegrityError:
                raise DuplicateKey(org.id) from None

    async def count_organizations(self) -> int:
        async with self._db.read() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(t.organizations))).scalar_one()
            )

    async def get_organizations(self, org_ids: list[str]) -> list[Organization]:
        if not org_ids:
            return []
        async with self._db.read() as conn:
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
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(t.organizations).order_by(t.organizations.c.created_at, t.organizations.c.id)
            )
            return [
                Organization(id=r.id, name=r.name, created_at=from_micros(r.created_at))
                for r in rows
            ]

    async def insert_user(self, user: User) -> None:
        async with self._db.write() as conn:
            try:
                await conn.execute(
                    t.users.insert().values(
                        id=user.id, name=user.name, created_at=to_micros(user.created_at)
                    )
                )
            except IntegrityError:
                raise DuplicateKey(user.id) from None

    async def get_user(self, user_id: str) -> User | None:
        async with self._db.read() as conn:
            r = (await conn.execute(select(t.users).where(t.users.c.id == user_id))).first()
            return (
                None
                if r is None
                else User(id=r.id, name=r.name, created_at=from_micros(r.created_at))
            )

    async def add_membership(self, user_id: str, org_id: str, at: datetime) -> bool:
        async with self._db.write() as conn:
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
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(t.memberships.c.org_id)
                .where(t.memberships.c.user_id == user_id)
                .order_by(t.memberships.c.org_id)
            )
            return [r.org_id for r in rows]

    # Tokens

    async def insert_token(self, token: Token) -> None:
        async with self._db.write() as conn:
            await insert_token_row(conn, token)

    async def find_token(self, secret_hash: str) -> Token | None:
        async with self._db.read() as conn:
            r = (
                await conn.execute(select(t.tokens).where(t.tokens.c.secret_hash == secret_hash))
            ).first()
            return None if r is None else _token(r)

    async def get_token(self, token_id: str) -> Token | None:
        async with self._db.read() as conn:
            r = (await conn.execute(select(t.tokens).where(t.tokens.c.id == token_id))).first()
            return None if r is None else _token(r)

    async def list_project_tokens(self, project_id: str) -> list[Token]:
        async with self._db.read() as conn:
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
        async with self._db.read() as conn:
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
        async with self._db.write() as conn:
            result = await conn.execute(
                update(t.tokens)
                .where(t.tokens.c.id == token_id, t.tokens.c.revoked_at.is_(None))
                .values(description=description)
            )
            return bool(result.rowcount)

    async def record_token_use(self, token_id: str, at: datetime, unless_since: datetime) -> None:
        last_used = t.tokens.c.last_used_at
        async with self._db.write() as conn:
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
        async with self._db.write() as conn:
            result = await conn.execute(
                update(t.tokens)
                .where(t.tokens.c.id == token_id, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=to_micros(at))
            )
            return bool(result.rowcount)


async def insert_token_row(conn: AsyncConnection, token: Token) -> None:
    """Insert a token inside a caller's transaction (a build's token goes in with its build).
    Raises DuplicateKey on an ID or secret-hash clash."""
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
                expires_at=micros_or_none(token.expires_at),
                revoked_at=micros_or_none(token.revoked_at),
            )
        )
    except IntegrityError:
        raise DuplicateKey(token.id) from None


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
        expires_at=at_or_none(r.expires_at),
        revoked_at=at_or_none(r.revoked_at),
        last_used_at=at_or_none(r.last_used_at),
    )
