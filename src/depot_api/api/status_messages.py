"""BuildKit's status messages (moby.buildkit.v1.StatusResponse) as the insights merge takes
them: decoded from the bytes an agent forwarded or an upload carried, and checked, each named
by its place in the request when it is malformed."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api.domain.errors import InvalidField
from depot_api.domain.insights import require_digest
from depot_api.gen.moby.buildkit.v1 import control_pb
from depot_api.models import LogPiece, StatusMessage, VertexUpdate

# The range of a google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_SECONDS = range(-62_135_596_800, 253_402_300_800)


def decode_status_messages(raw: Sequence[bytes], field: str) -> list[StatusMessage]:
    """Every message decoded, or InvalidField naming the first malformed one (field[i])."""
    return [decode_status_message(data, f"{field}[{index}]") for index, data in enumerate(raw)]


def decode_status_message(data: bytes, field: str) -> StatusMessage:
    try:
        message = control_pb.StatusResponse.from_binary(data)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidField(field, f"is not a moby.buildkit.v1.StatusResponse: {e}") from None
    return status_message(message, field, key=hashlib.sha256(data).hexdigest())


def status_message(message: control_pb.StatusResponse, field: str, *, key: str) -> StatusMessage:
    """The merge's view of a decoded message: its vertexes and logs (progress statuses and
    warnings are not kept), checked."""
    vertexes = []
    for index, v in enumerate(message.vertexes):
        where = f"{field}.vertexes[{index}]"
        require_digest(v.digest, f"{where}.digest")
        for n, digest in enumerate(v.inputs):
            require_digest(digest, f"{where}.inputs[{n}]")
        vertexes.append(
            VertexUpdate(
                digest=v.digest,
                name=v.name,
                inputs=tuple(v.inputs),
                started_us=_micros(v.started, f"{where}.started"),
                completed_us=_micros(v.completed, f"{where}.completed"),
                cached=v.cached,
                error=v.error,
            )
        )
    logs = []
    for index, log in enumerate(message.logs):
        where = f"{field}.logs[{index}]"
        require_digest(log.vertex, f"{where}.vertex")
        logs.append(
            LogPiece(
                digest=log.vertex,
                at_us=_micros(log.timestamp, f"{where}.timestamp") or 0,
                stream=log.stream,
                data=bytes(log.msg),
            )
        )
    return StatusMessage(key=key, vertexes=tuple(vertexes), logs=tuple(logs))


def _micros(at: Timestamp | None, field: str) -> int | None:
    if at is None:
        return None
    if at.seconds not in _SECONDS or not 0 <= at.nanos < 1_000_000_000:
        raise InvalidField(field, "is not a valid timestamp")
    return at.seconds * 1_000_000 + at.nanos // 1000
