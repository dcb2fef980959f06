"""Small conversions shared by the services: times, durations, optional fields."""

from __future__ import annotations

from datetime import datetime

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api.times import to_micros


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
