"""Time as the project keeps it: aware UTC datetimes, stored as exact epoch microseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_micros(at: datetime) -> int:
    # Integer arithmetic: float timestamps drop microseconds far from the epoch.
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    seconds, micros = divmod(value, 1_000_000)
    return _EPOCH + timedelta(0, seconds, micros)
