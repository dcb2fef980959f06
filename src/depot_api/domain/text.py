"""Checks on free text that callers send: names and descriptions."""

from __future__ import annotations

import unicodedata

from depot_api.domain.errors import InvalidField


def require_name(value: str, field: str, *, max_length: int = 128) -> str:
    """A required, printable, single-line name of at most max_length characters."""
    if not value or value.isspace():
        raise InvalidField(field, "is required and must not be blank")
    _require_printable(value, field, max_length)
    if value != value.strip():
        raise InvalidField(field, "must not start or end with white space")
    return value


def require_description(value: str, field: str, *, max_length: int = 256) -> str:
    """Optional printable text (may be empty) of at most max_length characters."""
    _require_printable(value, field, max_length)
    return value


def _require_printable(value: str, field: str, max_length: int) -> None:
    if len(value) > max_length:
        raise InvalidField(field, f"is too long: {len(value)} characters, at most {max_length}")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise InvalidField(field, "must not contain control characters")
