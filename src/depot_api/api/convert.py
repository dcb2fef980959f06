"""Small conversions shared by the services: times, durations, optional fields."""

from __future__ import annotations

from datetime import datetime

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api.domain.errors import InvalidField
from depot_api.times import from_micros, to_micros

# The range of a google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_TIMESTAMP_SECONDS = range(-62_135_596_800, 253_402_300_800)


def timestamp(at: datetime) -> Timestamp:
    seconds, micros = divmod(to_micros(at), 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


def micros_timestamp(micros: int) -> Timestamp:
    """A time kept as epoch microseconds (a Build's) as a Timestamp."""
    seconds, rest = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=rest * 1000)


def optional_micros_timestamp(micros: int | None) -> Timestamp | None:
    return None if micros is None else micros_timestamp(micros)


def optional_timestamp(at: datetime | None) -> Timestamp | None:
    return None if at is None else timestamp(at)


def time_of(at: Timestamp | None, field: str) -> datetime | None:
    """A Timestamp the caller sent, as a time (None when unset); InvalidField naming field
    when it is outside the Timestamp's range."""
    if at is None:
        return None
    if at.seconds not in _TIMESTAMP_SECONDS or not 0 <= at.nanos < 1_000_000_000:
        raise InvalidField(field, "is not a valid timestamp")
    return from_micros(at.seconds * 1_000_000 + at.nanos // 1000)
