"""Resource IDs: ten lowercase letters and digits, the shape of Depot's own IDs."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

from depot_api.domain.errors import InvalidField
from depot_api.domain.token_format import PREFIXES
from depot_api.store.errors import DuplicateKey

T = TypeVar("T")

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_LENGTH = 10
_SHAPE = re.compile(r"[a-z0-9]{10}")
# A clash of fresh IDs is rare (about 51 bits each); three in a row means something else.
_INSERT_ATTEMPTS = 3


def new_id() -> str:
    """A fresh random ID (about 51 bits); the store's primary keys catch the rare clash."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH))


async def with_fresh_ids(insert: Callable[[], Awaitable[T]]) -> T:
    """Run insert, which makes new IDs (and secrets) each time and stores them, again while
    the store reports a clash (DuplicateKey); the last attempt's clash is raised."""
    for _ in range(_INSERT_ATTEMPTS - 1):
        try:
            return await insert()
        except DuplicateKey:
            continue
    return await insert()


def is_id(value: str) -> bool:
    return _SHAPE.fullmatch(value) is not None


def require_id(value: str, field: str) -> str:
    """Return value if it has the shape of an ID, else raise InvalidField naming field."""
    if not value:
        raise InvalidField(field, "is required")
    if not _SHAPE.fullmatch(value):
        raise InvalidField(
            field, f"{quoted(value)} is not a valid ID (expected 10 lowercase letters or digits)"
        )
    return value


def quoted(value: str) -> str:
    """Echo at most a short, printable prefix of what the caller sent, but never a token
    secret pasted where an ID belongs: error messages end up in CI logs, so only its kind's
    prefix is shown."""
    if value.startswith(tuple(PREFIXES.values())):
        return f'"{value[:4]}…" (a token secret, not repeated here)'
    # Only what would not print is escaped (a newline, a control character); letters of any
    # script are shown as they are: messages are UTF-8 on every protocol.
    shown = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value[:40]
    )
    return f'"{shown}…"' if len(value) > 40 else f'"{shown}"'
