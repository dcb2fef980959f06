"""Keyset pagination: page tokens encode a position in the listing, never an offset."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import TypeVar

from depot_api.domain.errors import InvalidField
from depot_api.models import Page

T = TypeVar("T")

_PREFIX = "p1:"
_POSITION = re.compile(r"p1:(\d{1,19}):([a-z0-9]{10})")


def encode_page_token(position: tuple[int, str]) -> str:
    created_at, item_id = position
    raw = f"{_PREFIX}{created_at}:{item_id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(token: str | None, field: str = "page_token") -> tuple[int, str] | None:
    """The position a page token points at, or None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    match = _POSITION.fullmatch(raw)
    if match is None:
        raise InvalidField(field, "is not a page token returned by this listing")
    return int(match.group(1)), match.group(2)


def resolve_page_size(value: int | None, *, default: int, maximum: int) -> int:
    """The page size to use; absent or 0 means the default, as in Google's API guidelines."""
    if value is None or value == 0:
        return default
    if value < 0 or value > maximum:
        raise InvalidField("page_size", f"must be between 1 and {maximum}, got {value}")
    return value


def page_of(rows: list[T], limit: int, position: Callable[[T], tuple[int, str]]) -> Page[T]:
    """Cut a page from rows fetched with limit + 1: an extra row means another page exists."""
    if len(rows) <= limit:
        return Page(items=rows, next_page_token="")
    return Page(items=rows[:limit], next_page_token=encode_page_token(position(rows[limit - 1])))
